//! One family's range table: disjoint inclusive ranges sorted by start, and a bucket index over
//! the span their starts cover; built from sorted ranges, laid out flat, read back in place.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::flat::{record_len, FlatError, FlatReader, FlatWriter, Items, Slab};

/// Below this many ranges a plain binary search beats the bucket index (and saves its memory).
const BUCKET_INDEX_MIN_RANGES: usize = 1024;
/// Ranges per bucket, on average, when the starts spread evenly.
const RANGES_PER_BUCKET: usize = 2;

/// An address key of one family: an unsigned integer.
pub(super) trait Key:
    Copy + Ord + Default + FromBytes + IntoBytes + Immutable + KnownLayout + 'static
{
    const BITS: u32;
    /// `self - base`, shifted right by `shift`, as a bucket number (saturated).
    fn bucket(self, base: Self, shift: u32) -> usize;
    /// The bits `self - base` needs.
    fn span_bits(self, base: Self) -> u32;
    /// The last address of the network of prefix length `prefix` that `self` starts.
    fn last_of(self, prefix: u8) -> Self;
    fn widen(self) -> u128;
    fn narrow(wide: u128) -> Option<Self>;
}

impl Key for u32 {
    const BITS: u32 = 32;
    #[inline]
    fn bucket(self, base: u32, shift: u32) -> usize {
        ((self - base) >> shift) as usize
    }
    fn span_bits(self, base: u32) -> u32 {
        32 - (self - base).leading_zeros()
    }
    fn last_of(self, prefix: u8) -> u32 {
        self | u32::MAX.checked_shr(prefix.into()).unwrap_or(0)
    }
    fn widen(self) -> u128 {
        self.into()
    }
    fn narrow(wide: u128) -> Option<u32> {
        wide.try_into().ok()
    }
}

impl Key for u128 {
    const BITS: u32 = 128;
    #[inline]
    fn bucket(self, base: u128, shift: u32) -> usize {
        usize::try_from((self - base) >> shift).unwrap_or(usize::MAX)
    }
    fn span_bits(self, base: u128) -> u32 {
        128 - (self - base).leading_zeros()
    }
    fn last_of(self, prefix: u8) -> u128 {
        self | u128::MAX.checked_shr(prefix.into()).unwrap_or(0)
    }
    fn widen(self) -> u128 {
        self
    }
    fn narrow(wide: u128) -> Option<u128> {
        Some(wide)
    }
}

/// A network of one family as a builder keeps it: its first address and its prefix length,
/// packed (5 bytes for IPv4 and 17 for IPv6, where a range's two ends take 8 and 32): a SET kept
/// for its deltas holds one per member. Ordered as the ranges they cover are: by first address,
/// then by last.
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Net<T: Key> {
    start: T,
    prefix: u8,
}

impl<T: Key> Net<T> {
    pub(super) fn new(start: T, prefix: u8) -> Self {
        Net { start, prefix }
    }

    pub(super) fn start(self) -> T {
        self.start
    }

    /// Its first and last address.
    pub(super) fn range(self) -> (T, T) {
        let start = self.start;
        (start, start.last_of(self.prefix))
    }
}

impl<T: Key> Ord for Net<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let (start, other_start) = (self.start, other.start);
        start
            .cmp(&other_start)
            .then_with(|| other.prefix.cmp(&self.prefix))
    }
}

impl<T: Key> PartialOrd for Net<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Tags of a range table's records in the flat layout, per family: `+ 0x10` for IPv6.
const TAG_BASE: u64 = 0x4950_0001;
const TAG_SHIFT: u64 = 0x4950_0002;
const TAG_RANGES: u64 = 0x4950_0003;
const TAG_BUCKETS: u64 = 0x4950_0004;

/// Disjoint inclusive ranges `ranges[i][0]..=ranges[i][1]`, sorted by start.
#[derive(Debug, Clone, Default)]
pub(super) struct RangeTable<T: Key> {
    pub(super) ranges: Slab<[T; 2]>,
    /// `buckets[b]` is the index of the first range whose start lies in bucket `b` or later
    /// (bucket: `(start - base) >> shift`), one more entry than there are buckets; empty when the
    /// table is small.
    pub(super) buckets: Slab<u32>,
    /// The first range's start.
    pub(super) base: T,
    pub(super) shift: u32,
}

impl<T: Key> RangeTable<T> {
    /// The table of the networks `nets`, sorted.
    pub(super) fn build_sorted(nets: &[Net<T>]) -> Self {
        let shape = Shape::of(nets);
        let mut merged = Items::filled(shape.ranges, [T::default(); 2]);
        let mut buckets = Items::filled(shape.buckets, 0);
        merge_and_index(nets, &mut merged, &shape, &mut buckets);
        RangeTable {
            ranges: Slab::owned(merged),
            buckets: Slab::owned(buckets),
            base: shape.base,
            shift: shape.shift,
        }
    }

    /// The range holding `key`, as its index.
    #[inline]
    pub(super) fn find(&self, key: T) -> Option<usize> {
        if key < self.base {
            return None;
        }
        let (lo, hi) = if self.buckets.is_empty() {
            (0, self.ranges.len())
        } else {
            // A key past the last bucket is past every start: the last bucket holds its candidate.
            let bucket = key
                .bucket(self.base, self.shift)
                .min(self.buckets.len() - 2);
            (
                self.buckets[bucket] as usize,
                self.buckets[bucket + 1] as usize,
            )
        };
        // Ranges left of `lo` all start in earlier buckets, so when no range of this bucket starts
        // at or before `key`, the candidate is the last range of an earlier bucket.
        let after = lo + self.ranges[lo..hi].partition_point(|r| r[0] <= key);
        let candidate = after.checked_sub(1)?;
        let [start, end] = self.ranges[candidate];
        (start <= key && key <= end).then_some(candidate)
    }

    pub(super) fn len(&self) -> usize {
        self.ranges.len()
    }

    pub(super) fn heap_bytes(&self) -> usize {
        self.ranges.bytes() + self.buckets.bytes()
    }

    pub(super) fn flat_len(&self) -> usize {
        flat_len::<T>(self.ranges.len(), self.buckets.len())
    }

    pub(super) fn write_flat(&self, writer: &mut FlatWriter, family: u64) {
        writer.u128(TAG_BASE + family, self.base.widen());
        writer.u128(TAG_SHIFT + family, self.shift.into());
        writer.slice(TAG_RANGES + family, &self.ranges);
        writer.slice(TAG_BUCKETS + family, &self.buckets);
    }

    /// Lays out the table `sorted` networks make, as [`RangeTable::write_flat`] would once it is
    /// built, without building it: their ranges merged straight into their record.
    pub(super) fn write_flat_sorted(
        sorted: &[Net<T>],
        shape: &Shape<T>,
        writer: &mut FlatWriter,
        family: u64,
    ) {
        writer.u128(TAG_BASE + family, shape.base.widen());
        writer.u128(TAG_SHIFT + family, shape.shift.into());
        let ranges = writer.record::<[T; 2]>(TAG_RANGES + family, shape.ranges);
        let buckets = writer.record::<u32>(TAG_BUCKETS + family, shape.buckets);
        merge_and_index(sorted, ranges, shape, buckets);
    }

    /// A table as [`RangeTable::write_flat`] laid it out, checked for what keeps a lookup within
    /// bounds (the base and shift of its family, an index that never points past the ranges),
    /// in time linear in the index, not the ranges: whether the ranges are the ones laid out is
    /// the store's checksum's to say. Ranges out of order answer wrongly, never out of bounds,
    /// and [`RangeTable::find`] names only a range that holds the key.
    pub(super) fn read_flat(reader: &mut FlatReader, family: u64) -> Result<Self, FlatError> {
        let invalid = |what| FlatError::Invalid { what };
        let base = T::narrow(reader.u128(TAG_BASE + family)?)
            .ok_or(invalid("a base wider than its family"))?;
        let shift = u32::try_from(reader.u128(TAG_SHIFT + family)?)
            .ok()
            .filter(|&shift| shift < T::BITS)
            .ok_or(invalid("a shift as wide as the family"))?;
        let ranges = reader.slab::<[T; 2]>(TAG_RANGES + family)?;
        let buckets = reader.slab::<u32>(TAG_BUCKETS + family)?;
        if ranges.len() > u32::MAX as usize {
            return Err(invalid("more ranges than the index addresses"));
        }
        let in_step = buckets.windows(2).all(|w| w[0] <= w[1])
            && buckets
                .last()
                .is_none_or(|&last| last as usize <= ranges.len());
        if buckets.len() == 1 || !in_step {
            return Err(invalid("a bucket index that points past its ranges"));
        }
        Ok(RangeTable {
            ranges,
            buckets,
            base,
            shift,
        })
    }
}

/// What the table of some sorted ranges is, found in one pass without building it.
pub(super) struct Shape<T> {
    /// Ranges once overlapping ones are merged.
    pub(super) ranges: usize,
    pub(super) base: T,
    pub(super) shift: u32,
    /// Entries of the bucket index: 0 when the table is small.
    pub(super) buckets: usize,
}

impl<T: Key> Shape<T> {
    pub(super) fn of(sorted: &[Net<T>]) -> Shape<T> {
        let (mut ranges, mut last_start, mut last_end) = (0, T::default(), T::default());
        for (start, end) in sorted.iter().map(|net| net.range()) {
            if ranges > 0 && start <= last_end {
                last_end = last_end.max(end);
            } else {
                ranges += 1;
                last_start = start;
                last_end = end;
            }
        }
        let base = sorted.first().map_or_else(T::default, |net| net.start());
        let (buckets, shift) = if ranges >= BUCKET_INDEX_MIN_RANGES {
            // A power of two of buckets, spread over the span from the first start to the last,
            // so that every start's bucket is below their count.
            let count = (ranges / RANGES_PER_BUCKET).next_power_of_two();
            let shift = last_start
                .span_bits(base)
                .saturating_sub(count.trailing_zeros());
            (count + 1, shift)
        } else {
            (0, 0)
        };
        Shape {
            ranges,
            base,
            shift,
            buckets,
        }
    }
}

/// The bytes a table of `ranges` ranges and `buckets` index entries takes laid out flat.
pub(super) fn flat_len<T: Key>(ranges: usize, buckets: usize) -> usize {
    2 * record_len(16)
        + record_len(ranges * std::mem::size_of::<[T; 2]>())
        + record_len(buckets * 4)
}

/// Merges the ranges of sorted `nets` into `merged`, as many as [`Shape::of`] counts (only
/// overlapping ranges merge, so an entry that overlaps nothing stays itself and `decide()` can
/// name it), and fills `buckets` with the index of the merged ranges: entry `b` the first range
/// whose start's bucket is `b` or later. One pass: a large list's networks are read once, not
/// again to index them.
fn merge_and_index<T: Key>(
    nets: &[Net<T>],
    merged: &mut [[T; 2]],
    shape: &Shape<T>,
    buckets: &mut [u32],
) {
    buckets.fill(0);
    // Each range counts in the entry after its bucket, and the counts summed give every entry
    // the ranges before it.
    let top = buckets.len().checked_sub(2);
    let mut at = 0;
    for (start, end) in nets.iter().map(|net| net.range()) {
        if at > 0 && start <= merged[at - 1][1] {
            merged[at - 1][1] = end.max(merged[at - 1][1]);
        } else {
            merged[at] = [start, end];
            at += 1;
            if let Some(top) = top {
                buckets[start.bucket(shape.base, shape.shift).min(top) + 1] += 1;
            }
        }
    }
    let mut before = 0;
    for entry in buckets.iter_mut() {
        before += *entry;
        *entry = before;
    }
}
