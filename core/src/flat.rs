//! Flat, pointer-free tables: what a lookup reads (the whitelist's ranges and index, a set of
//! ids) laid out as plain arrays in one buffer, so that one process can build them into memory
//! every worker of the host maps, and every worker reads them in place.
//!
//! A table's arrays are [`Slab`]s: a slice that either owns its memory or borrows it from a
//! [`Backing`] (the shared mapping's generation) that it keeps alive. A lookup reads a slab as a
//! plain slice either way. [`FlatWriter`] lays tables out; [`FlatReader`] takes them back from
//! bytes nobody vouches for: every length, offset and alignment is checked, and the tables check
//! what keeps their lookups within bounds, so a torn or corrupted buffer is an error or wrong
//! answers, never a crash or an out-of-bounds read. That the bytes are the ones laid out is for a
//! checksum to say: the host's store checks one before any worker reads a block.
//!
//! The layout is a sequence of records, each 16-byte aligned: a length in bytes and a tag (both
//! u64, little-endian), then that many bytes, padded to 16.

use std::alloc::{self, Layout};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::Arc;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

#[cfg(not(target_endian = "little"))]
compile_error!("the flat layout is little-endian, as the hosts gray runs on are");

/// Records start on this boundary: enough for u128.
const ALIGN: usize = 16;

/// Memory that flat tables borrow from, kept alive as long as a slab reads it.
pub trait Backing: Send + Sync {
    fn bytes(&self) -> &[u8];
}

/// The bytes of a buffer that is 16-byte aligned wherever the allocator puts it: how a flat
/// buffer is held in private memory (tests, and a worker with no shared mapping).
pub struct Aligned(Items<u128>, usize);

impl Aligned {
    pub fn copy(bytes: &[u8]) -> Aligned {
        let mut words = Items::filled(bytes.len().div_ceil(ALIGN), 0u128);
        words.as_mut_bytes()[..bytes.len()].copy_from_slice(bytes);
        Aligned(words, bytes.len())
    }

    /// `len` bytes of records, as `write` lays them out.
    pub fn lay_out(len: usize, write: impl FnOnce(&mut FlatWriter)) -> Aligned {
        let mut aligned = Aligned(Items::filled(0, 0), 0);
        aligned.lay_out_again(len, write);
        aligned
    }

    /// Lays out records again in this buffer's memory, replaced by a larger one as needed: memory
    /// already touched costs no page faults, where a fresh buffer of a large list's size costs
    /// thousands.
    pub fn lay_out_again(&mut self, len: usize, write: impl FnOnce(&mut FlatWriter)) {
        let words = len.div_ceil(ALIGN);
        if words > self.0.len() {
            self.0 = Items::filled(words, 0);
        }
        self.1 = len;
        let mut writer = FlatWriter::new(&mut self.0.as_mut_bytes()[..len]);
        write(&mut writer);
        debug_assert!(writer.done(), "a flat length that is not what was laid out");
    }
}

/// A huge page of x86-64 and arm64 with 4K pages: the span one TLB entry covers in memory the
/// kernel backs with transparent huge pages.
const HUGE_PAGE: usize = 2 << 20;

/// Items in memory of their own, filled once and then written in place: a table being built, or
/// a flat buffer. A huge page's worth or more is mapped apart, starting on a huge page, and
/// advised to be backed by them before it is first written (`MADV_HUGEPAGE`, honoured where
/// transparent huge pages are `madvise` or `always`): a lookup in a 1M-entry list reads two random
/// places of ~20 MB, and with 4K pages each costs a TLB miss, ~10 ns of a ~50 ns lookup on the
/// bench's machine. Mapped apart, not from the allocator, so that no heap memory keeps the advice
/// once the table is gone (a small allocation there would take a whole huge page).
pub struct Items<T>(Storage<T>);

/// Private, so that only [`Items::filled`] makes a mapped one.
enum Storage<T> {
    Boxed(Box<[T]>),
    /// `len` items at `ptr`, which starts a mapping of `bytes` bytes that only they use.
    Mapped {
        ptr: NonNull<T>,
        len: usize,
        bytes: usize,
    },
}

// SAFETY: `Items` owns its items as a `Box<[T]>` would.
unsafe impl<T: Send> Send for Items<T> {}
// SAFETY: as above.
unsafe impl<T: Sync> Sync for Items<T> {}

impl<T: Copy> Items<T> {
    /// `len` copies of `value`.
    pub fn filled(len: usize, value: T) -> Items<T> {
        let layout = Layout::array::<T>(len).expect("a table that fits the address space");
        if layout.size() < HUGE_PAGE {
            return Items(Storage::Boxed(vec![value; len].into_boxed_slice()));
        }
        let (at, bytes) =
            map_huge(layout.size()).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        let ptr = at.cast::<T>();
        // SAFETY: the mapping holds `len` items of `T`, none initialized yet; `T: Copy` needs no
        // drop.
        unsafe {
            for i in 0..len {
                ptr.as_ptr().add(i).write(value);
            }
        }
        Items(Storage::Mapped { ptr, len, bytes })
    }
}

impl<T> Deref for Items<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match &self.0 {
            Storage::Boxed(items) => items,
            // SAFETY: `ptr` holds `len` items, all written by `filled`.
            Storage::Mapped { ptr, len, .. } => unsafe {
                std::slice::from_raw_parts(ptr.as_ptr(), *len)
            },
        }
    }
}

impl<T> DerefMut for Items<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match &mut self.0 {
            Storage::Boxed(items) => items,
            // SAFETY: as in `deref`, borrowed mutably through `self`.
            Storage::Mapped { ptr, len, .. } => unsafe {
                std::slice::from_raw_parts_mut(ptr.as_ptr(), *len)
            },
        }
    }
}

impl<T> Drop for Items<T> {
    fn drop(&mut self) {
        if let Storage::Mapped { ptr, bytes, .. } = self.0 {
            // SAFETY: `ptr` starts a mapping of `bytes` bytes that only these items use; they are
            // `Copy`, nothing to drop.
            unsafe {
                libc::munmap(ptr.as_ptr().cast(), bytes);
            }
        }
    }
}

/// The system's page size: what memory advice is given in whole units of.
pub fn page_size() -> usize {
    // SAFETY: sysconf reads a constant of the system.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// Maps the pages of `bytes` in, written to, in one call, before they are written: fresh pages
/// would otherwise fault in one at a time. Pages already there cost a walk of their page tables.
/// A kernel before 5.14 does not know the advice: the writes fault them in then.
pub fn populate_pages(bytes: &mut [u8]) {
    // SAFETY: advice on memory that `bytes` borrows; it changes no byte of it.
    #[cfg(target_os = "linux")]
    unsafe {
        libc::madvise(
            bytes.as_mut_ptr().cast(),
            bytes.len(),
            libc::MADV_POPULATE_WRITE,
        );
    }
}

/// A mapping of its own for at least `bytes` bytes, starting on a huge page: where it starts and
/// how long it is; `None` when the system has no memory for it. Its fresh pages are advised to be
/// huge ones, then mapped in one call, where the writes would otherwise fault them in one at a
/// time (~9 ms for 22 MB on the bench's machine, against ~5 ms populated); a kernel without
/// transparent huge pages, or before 5.14, ignores the advice it does not know.
fn map_huge(bytes: usize) -> Option<(NonNull<u8>, usize)> {
    let len = bytes.checked_next_multiple_of(page_size())?;
    let span = len.checked_add(HUGE_PAGE)?;
    // SAFETY: an anonymous private mapping with no address hint; the result is checked.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return None;
    }
    let base = base as usize;
    let at = base.next_multiple_of(HUGE_PAGE);
    // SAFETY: the pages before `at` and after its `len` bytes are this mapping's, unused: given
    // back; then advice on the pages kept, which changes no byte of them, borrowed as the fresh
    // (zeroed) bytes they are.
    unsafe {
        if at > base {
            libc::munmap(base as *mut libc::c_void, at - base);
        }
        if base + span > at + len {
            libc::munmap((at + len) as *mut libc::c_void, base + span - (at + len));
        }
        #[cfg(target_os = "linux")]
        libc::madvise(at as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
        populate_pages(std::slice::from_raw_parts_mut(at as *mut u8, len));
    }
    NonNull::new(at as *mut u8).map(|at| (at, len))
}

impl Backing for Aligned {
    fn bytes(&self) -> &[u8] {
        &self.0.as_bytes()[..self.1]
    }
}

/// Memory shared with other readers that a table is laid out straight into and read in place
/// from: a block of the host's store, so that the session's holder neither lays a large list out
/// in memory of its own nor copies it into the store.
pub trait Stage {
    /// `len` bytes of records laid out by `write`; `None` when there is no room for them.
    fn lay_out(
        &self,
        len: usize,
        write: &mut dyn FnMut(&mut FlatWriter),
    ) -> Option<Arc<dyn Backing>>;
}

/// Why flat bytes were not taken as a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlatError {
    /// The buffer ends inside a record.
    Truncated { at: usize },
    /// A record does not start on a 16-byte boundary of memory, or is not a whole number of
    /// its elements.
    Misaligned { at: usize },
    /// A record carries another tag than the one expected there.
    Tag {
        at: usize,
        found: u64,
        expected: u64,
    },
    /// The table's own invariant does not hold: `what` says which.
    Invalid { what: &'static str },
}

impl fmt::Display for FlatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlatError::Truncated { at } => write!(f, "the table ends inside a record at byte {at}"),
            FlatError::Misaligned { at } => write!(f, "a misaligned record at byte {at}"),
            FlatError::Tag {
                at,
                found,
                expected,
            } => write!(
                f,
                "record at byte {at} is tagged {found:#x}, expected {expected:#x}"
            ),
            FlatError::Invalid { what } => write!(f, "an inconsistent table: {what}"),
        }
    }
}

impl std::error::Error for FlatError {}

/// An array of `T`, owned or borrowed from a [`Backing`] it keeps alive.
pub struct Slab<T: 'static> {
    ptr: *const T,
    len: usize,
    _owner: Owner<T>,
}

enum Owner<T: 'static> {
    Owned(Items<T>),
    Borrowed(Arc<dyn Backing>),
}

// SAFETY: a slab is an immutable slice of `T` and what keeps it alive, both shareable.
unsafe impl<T: Send + Sync> Send for Slab<T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync> Sync for Slab<T> {}

impl<T> Slab<T> {
    pub fn owned(items: Items<T>) -> Slab<T> {
        Slab {
            ptr: items.as_ptr(),
            len: items.len(),
            _owner: Owner::Owned(items),
        }
    }

    /// Bytes held, owned or borrowed.
    pub fn bytes(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }
}

impl<T: Copy + Default> Default for Slab<T> {
    fn default() -> Self {
        Slab::owned(Items::filled(0, T::default()))
    }
}

impl<T> Deref for Slab<T> {
    type Target = [T];

    #[inline]
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` and `len` describe memory `_owner` holds and never changes: a boxed slice
        // (whose heap memory does not move with the box), or a range of a backing checked to
        // hold `len` aligned `T`s when the slab was read.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl<T: fmt::Debug> fmt::Debug for Slab<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T: Copy + Default> Clone for Slab<T> {
    fn clone(&self) -> Self {
        match &self._owner {
            Owner::Owned(items) => {
                let mut copy = Items::filled(items.len(), T::default());
                copy.copy_from_slice(items);
                Slab::owned(copy)
            }
            Owner::Borrowed(backing) => Slab {
                ptr: self.ptr,
                len: self.len,
                _owner: Owner::Borrowed(backing.clone()),
            },
        }
    }
}

/// The bytes a record of `bytes` bytes takes: its header and the bytes, padded.
pub fn record_len(bytes: usize) -> usize {
    ALIGN + bytes.next_multiple_of(ALIGN)
}

/// Lays out tables as records, straight into memory sized for them beforehand (a table's
/// `flat_len`): a block of the host's store, or [`Aligned::lay_out`]'s buffer.
pub struct FlatWriter<'a> {
    rest: &'a mut [u8],
}

impl<'a> FlatWriter<'a> {
    /// A writer into `out`, which starts on a 16-byte boundary.
    pub fn new(out: &'a mut [u8]) -> FlatWriter<'a> {
        assert!(
            (out.as_ptr() as usize).is_multiple_of(ALIGN),
            "flat records start 16-byte aligned"
        );
        FlatWriter { rest: out }
    }

    /// Room for a record of `count` items, to be filled in place; it lives as long as the memory
    /// written into, so that a table can read one record while it fills the next.
    pub fn record<T: FromBytes + IntoBytes + KnownLayout + 'a>(
        &mut self,
        tag: u64,
        count: usize,
    ) -> &'a mut [T] {
        let bytes = count * std::mem::size_of::<T>();
        let (record, rest) = std::mem::take(&mut self.rest).split_at_mut(record_len(bytes));
        self.rest = rest;
        let (header, body) = record.split_at_mut(ALIGN);
        header[..8].copy_from_slice(&(bytes as u64).to_le_bytes());
        header[8..].copy_from_slice(&tag.to_le_bytes());
        let (items, padding) = body.split_at_mut(bytes);
        padding.fill(0);
        <[T]>::mut_from_bytes(items).expect("records start 16-byte aligned")
    }

    pub fn slice<T: FromBytes + IntoBytes + KnownLayout + Copy + 'a>(
        &mut self,
        tag: u64,
        items: &[T],
    ) {
        self.record::<T>(tag, items.len()).copy_from_slice(items);
    }

    pub fn u128(&mut self, tag: u64, value: u128) {
        self.slice(tag, &[value]);
    }

    /// Whether the memory sized beforehand is filled exactly.
    pub fn done(&self) -> bool {
        self.rest.is_empty()
    }
}

/// Reads records back from a backing, in the order they were written.
pub struct FlatReader {
    backing: Arc<dyn Backing>,
    at: usize,
}

impl FlatReader {
    pub fn new(backing: Arc<dyn Backing>) -> FlatReader {
        FlatReader { backing, at: 0 }
    }

    /// Whether every record has been read.
    pub fn done(&self) -> bool {
        self.at >= self.backing.bytes().len()
    }

    /// The next record's bytes, its tag checked.
    fn record(&mut self, tag: u64) -> Result<(usize, usize), FlatError> {
        let bytes = self.backing.bytes();
        let at = self.at;
        let header = bytes
            .get(at..at + ALIGN)
            .ok_or(FlatError::Truncated { at })?;
        if !(bytes.as_ptr() as usize + at).is_multiple_of(ALIGN) {
            return Err(FlatError::Misaligned { at });
        }
        let len = u64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
        let found = u64::from_le_bytes(header[8..].try_into().expect("8 bytes"));
        if found != tag {
            return Err(FlatError::Tag {
                at,
                found,
                expected: tag,
            });
        }
        let start = at + ALIGN;
        let len = usize::try_from(len)
            .ok()
            .filter(|&len| len <= bytes.len() - start)
            .ok_or(FlatError::Truncated { at })?;
        self.at = (start + len).next_multiple_of(ALIGN);
        Ok((start, len))
    }

    /// The next record as a slab of `T`, borrowed from the backing.
    pub fn slab<T: FromBytes + Immutable + KnownLayout>(
        &mut self,
        tag: u64,
    ) -> Result<Slab<T>, FlatError> {
        let (start, len) = self.record(tag)?;
        let items = <[T]>::ref_from_bytes(&self.backing.bytes()[start..start + len])
            .map_err(|_| FlatError::Misaligned { at: start })?;
        Ok(Slab {
            ptr: items.as_ptr(),
            len: items.len(),
            _owner: Owner::Borrowed(self.backing.clone()),
        })
    }

    pub fn u128(&mut self, tag: u64) -> Result<u128, FlatError> {
        match *self.slab::<u128>(tag)? {
            [value] => Ok(value),
            _ => Err(FlatError::Invalid {
                what: "a scalar record of another size",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(len: usize, write: impl FnOnce(&mut FlatWriter)) -> Vec<u8> {
        Aligned::lay_out(len, write).bytes().to_vec()
    }

    #[test]
    fn items_of_a_huge_page_or_more_start_on_one_and_hold_what_they_were_filled_with() {
        let large = Items::filled(HUGE_PAGE / 32 + 3, [7u128, 9]);
        assert!((large.as_ptr() as usize).is_multiple_of(HUGE_PAGE));
        assert!(large.iter().all(|&item| item == [7, 9]));
        let small = Items::filled(3, 5u32);
        assert_eq!(&small[..], &[5, 5, 5]);
        assert!(Items::filled(0, 1u64).is_empty());
    }

    #[test]
    fn a_buffer_laid_out_again_larger_holds_the_new_records() {
        let mut aligned = Aligned::lay_out(record_len(4), |writer| writer.slice(1, &[1u32]));
        let len = record_len(HUGE_PAGE);
        aligned.lay_out_again(len, |writer| {
            writer.slice(2, &vec![3u8; HUGE_PAGE]);
        });
        assert_eq!(aligned.bytes().len(), len);
        assert!(aligned.bytes()[ALIGN..].iter().all(|&byte| byte == 3));
    }

    #[test]
    #[should_panic]
    fn a_record_past_the_memory_sized_for_it_is_a_panic_not_a_write() {
        Aligned::lay_out(record_len(4), |writer| writer.slice(1, &[1u32, 2, 3, 4, 5]));
    }

    #[test]
    fn records_read_back_in_place_and_keep_their_backing_alive() {
        let len = record_len(12) + record_len(16) + record_len(0);
        let backing: Arc<dyn Backing> = Arc::new(Aligned::lay_out(len, |writer| {
            writer.slice(1, &[1u32, 2, 3]);
            writer.u128(2, u128::MAX - 5);
            writer.slice::<u64>(3, &[]);
        }));
        let mut reader = FlatReader::new(backing.clone());
        let slab = reader.slab::<u32>(1).unwrap();
        assert_eq!(reader.u128(2).unwrap(), u128::MAX - 5);
        assert!(reader.slab::<u64>(3).unwrap().is_empty());
        assert!(reader.done());
        drop(reader);
        drop(backing);
        assert_eq!(&*slab, &[1, 2, 3]);
        assert_eq!(&*slab.clone(), &[1, 2, 3]);
    }

    #[test]
    fn a_wrong_tag_a_short_buffer_and_a_ragged_record_are_errors() {
        let bytes = bytes(record_len(3), |writer| writer.slice(7, &[1u8, 2, 3]));
        let read = |bytes: &[u8]| {
            FlatReader::new(Arc::new(Aligned::copy(bytes)))
                .slab::<u16>(7)
                .map(|s| s.to_vec())
        };
        assert_eq!(read(&bytes), Err(FlatError::Misaligned { at: 16 }));
        assert_eq!(read(&bytes[..18]), Err(FlatError::Truncated { at: 0 }));
        assert_eq!(read(&bytes[..8]), Err(FlatError::Truncated { at: 0 }));
        let mut reader = FlatReader::new(Arc::new(Aligned::copy(&bytes)));
        assert!(matches!(
            reader.slab::<u8>(8),
            Err(FlatError::Tag { found: 7, .. })
        ));
        let mut huge = bytes.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(read(&huge), Err(FlatError::Truncated { at: 0 }));
    }

    #[test]
    fn a_backing_that_is_not_aligned_is_refused() {
        let mut bytes = vec![0u8];
        bytes.extend(self::bytes(record_len(4), |writer| {
            writer.slice(1, &[1u32])
        }));
        struct Offset(Aligned);
        impl Backing for Offset {
            fn bytes(&self) -> &[u8] {
                &self.0.bytes()[1..]
            }
        }
        let mut reader = FlatReader::new(Arc::new(Offset(Aligned::copy(&bytes))));
        assert_eq!(
            reader.slab::<u32>(1).map(|s| s.len()),
            Err(FlatError::Misaligned { at: 0 })
        );
    }
}
