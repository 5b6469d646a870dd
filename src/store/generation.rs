//! Generations: what the holder loaded, published for every worker of the host. Each item (a
//! key's value: a text, or a whitelist laid out flat) lies in a block of its own, with a checksum;
//! a manifest lists the items, and the header's directory word names the manifest in force. An
//! item whose key and version are unchanged keeps its block, so a change costs the blocks of what
//! changed. The holder writes the next manifest into the slot not in force and swaps the
//! directory word by compare-and-swap under its fencing token, then wakes the readers.
//!
//! A reader announces the generation it adopts (see `readers`), reads the manifest and checks
//! every block it has not checked before against its checksum: a torn or corrupted manifest or
//! block is an error that names what broke, and the reader keeps what it had. A large whitelist
//! block is the exception: summing it is most of what a change costs a host's readers, and its
//! flat tables keep every lookup inside it whatever its bytes, so the reader routes by it first
//! and checks it right after (see [`Checks`]).

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use gray_core::flat::Backing;
use gray_core::manifest::Manifest;
pub use gray_core::manifest::{Item, ItemForm};
use once_cell::sync::Lazy;
use xxhash_rust::xxh3::xxh3_64;

use super::blocks::Block;
use super::readers::NONE;
use super::{Store, Token, MANIFESTS_AT, MANIFEST_SLOT};

/// The store's view of an item: the block that holds its bytes.
pub(super) trait ItemBlock {
    fn block(&self) -> Block;
}

impl ItemBlock for Item {
    fn block(&self) -> Block {
        Block {
            first: self.first,
            chunks: self.chunks,
            id: self.block,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// Another worker took the lease: this one publishes nothing more.
    LeaseLost,
    /// The data area has no run of free chunks this long.
    Full { bytes: usize },
    /// The manifest's text does not fit its slot.
    ManifestTooLarge { bytes: usize },
    /// The manifest in force cannot be trusted.
    Manifest(String),
    /// Every reader slot is a live process's: this one cannot say what it reads.
    NoReaderSlot,
    /// An item's block cannot be trusted.
    Item { key: String, why: String },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::LeaseLost => write!(f, "another worker holds the session now"),
            StoreError::Full { bytes } => {
                write!(f, "no room for {bytes} bytes in the host's shared memory")
            }
            StoreError::ManifestTooLarge { bytes } => write!(
                f,
                "a manifest of {bytes} bytes, over the {MANIFEST_SLOT} it has room for"
            ),
            StoreError::Manifest(why) => write!(f, "the host's manifest: {why}"),
            StoreError::NoReaderSlot => write!(
                f,
                "every reader slot of the host's shared memory is a live process's"
            ),
            StoreError::Item { key, why } => write!(f, "the host's copy of key {key}: {why}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl StoreError {
    /// Key `key`'s block does not match its checksum.
    pub fn mismatched(key: &str) -> StoreError {
        StoreError::Item {
            key: key.into(),
            why: "its checksum does not match".into(),
        }
    }
}

/// A whitelist block of this many bytes or more is adopted before its checksum is checked: on
/// a 2-core host, 7 readers summing the 22 MB of a 1M-member list before routing by it took
/// 13-15 ms of a change's ~50.
pub(super) const CHECKED_AFTER: usize = 1 << 20;

/// What this process knows of blocks' checksums, by `(block id, checksum)`.
#[derive(Default)]
pub struct Checks {
    /// Blocks whose bytes matched their checksum (or that this process wrote).
    matched: HashSet<(u64, u64)>,
    /// Blocks whose bytes did not: never adopted before being checked again.
    mismatched: HashSet<(u64, u64)>,
}

impl Checks {
    /// Whether `item`'s bytes match its checksum, noted either way.
    pub fn check(&mut self, item: &Item, bytes: &[u8]) -> bool {
        let matched = xxh3_64(bytes) == item.checksum;
        if matched {
            self.matched.insert(item.checked());
        } else {
            self.mismatched.insert(item.checked());
        }
        matched
    }

    /// Whether `item` may be adopted now and checked after.
    fn checked_after(&self, item: &Item) -> bool {
        item.form == ItemForm::Whitelist
            && item.len >= CHECKED_AFTER
            && !self.mismatched.contains(&item.checked())
    }

    /// Forgets the blocks `adopted` does not list: they are freed, and no generation lists
    /// them again (block ids are never given twice).
    pub fn keep_only(&mut self, adopted: &Adopted) {
        let listed: HashSet<(u64, u64)> = adopted.items.iter().map(|(i, _)| i.checked()).collect();
        self.matched.retain(|checked| listed.contains(checked));
        self.mismatched.retain(|checked| listed.contains(checked));
    }
}

/// A generation as a reader adopted it: each item and its bytes.
pub struct Adopted {
    pub generation: u64,
    pub items: Vec<(Item, Arc<Pin>)>,
    /// The items adopted unchecked (large whitelists, see [`CHECKED_AFTER`]), by index in
    /// `items`: the adopter checks them with [`Checks::check`] once it routes by them, and goes
    /// back to what it had for any that does not match.
    pub unchecked: Vec<usize>,
}

impl Adopted {
    pub fn unchecked_items(&self) -> Vec<(Item, Arc<Pin>)> {
        self.unchecked
            .iter()
            .map(|&i| self.items[i].clone())
            .collect()
    }
}

/// An item's bytes in the store, read by this process while the pin lives.
pub struct Pin {
    store: &'static Store,
    slot: usize,
    block: u64,
    bytes: &'static [u8],
}

impl Backing for Pin {
    fn bytes(&self) -> &[u8] {
        self.bytes
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        self.store.unpin(self.slot, self.block);
    }
}

/// A test's fault (`GRAY_FAULT=stray-write`): a large whitelist published with a checksum its
/// bytes do not match, as a stray write into its block would leave it.
fn stray_write(form: ItemForm, len: usize) -> u64 {
    static FAULTY: Lazy<bool> = Lazy::new(|| {
        std::env::var_os(crate::refresher::FAULT_ENV).is_some_and(|f| f == "stray-write")
    });
    u64::from(form == ItemForm::Whitelist && len >= CHECKED_AFTER && *FAULTY)
}

fn generation_of(dir: u64) -> u64 {
    (dir & u64::from(u32::MAX)) >> 1
}

impl Store {
    pub(super) fn manifest_words(&self, slot: u64) -> &[std::sync::atomic::AtomicU64] {
        self.words(
            MANIFESTS_AT + slot as usize * MANIFEST_SLOT,
            MANIFEST_SLOT / 8,
        )
    }

    /// The manifest in force, as `(directory word, manifest)`; `None` before the first publish.
    fn manifest(&self) -> Result<Option<(u64, Manifest)>, StoreError> {
        let dir = self.header().dir.load(Ordering::SeqCst);
        let generation = generation_of(dir);
        if generation == 0 {
            return Ok(None);
        }
        let bytes = crate::region::read_sequenced(self.manifest_words(dir & 1))
            .ok_or_else(|| StoreError::Manifest("it was being written".into()))?;
        let manifest = Manifest::decode(&bytes, generation).map_err(StoreError::Manifest)?;
        Ok(Some((dir, manifest)))
    }

    /// Whether a generation is in force whose manifest does not read back.
    pub fn manifest_unreadable(&self) -> bool {
        self.manifest().is_err()
    }

    /// Publishes the next generation, `items` in order; an item whose key, kind, form and
    /// version the generation in force has keeps its block, and only the others are laid out.
    /// The blocks laid out go into `checks`: their checksum was made from the bytes written,
    /// so the writer does not read them back to check it. Returns the generation's number.
    pub fn publish(
        &'static self,
        token: Token,
        items: Vec<NewItem<'_>>,
        checks: &mut Checks,
    ) -> Result<u64, StoreError> {
        let current = self.manifest().ok().flatten();
        let dir = current
            .as_ref()
            .map_or_else(|| self.header().dir.load(Ordering::SeqCst), |(d, _)| *d);
        if !self.holds(token) || !self.fenced_by(dir, token) {
            return Err(StoreError::LeaseLost);
        }
        let (mut laid_out, mut listed_staged) = (Vec::new(), Vec::new());
        let published = self.publish_items(
            token,
            dir,
            current,
            items,
            (&mut laid_out, &mut listed_staged),
            checks,
        );
        if published.is_err() {
            // No manifest names them: nobody reads them.
            for block in laid_out {
                self.free(block);
            }
            // Still listed by none: freed once this process no longer reads them.
            self.staged().extend(listed_staged);
        }
        published
    }

    fn publish_items(
        &'static self,
        token: Token,
        dir: u64,
        current: Option<(u64, Manifest)>,
        items: Vec<NewItem<'_>>,
        (laid_out, listed_staged): (&mut Vec<Block>, &mut Vec<(Block, usize)>),
        checks: &mut Checks,
    ) -> Result<u64, StoreError> {
        let generation = self.header().next_generation.fetch_add(1, Ordering::AcqRel) + 1;
        let mut listed = Vec::with_capacity(items.len());
        // Pins of the blocks laid out, held until the manifest that lists them is in force.
        let mut writing = Vec::new();
        for new in items {
            let kept = current.as_ref().and_then(|(_, m)| {
                m.items.iter().find(|i| {
                    i.key == new.key
                        && i.version == new.version
                        && i.form == new.form
                        && i.kind == new.kind
                        && !checks.mismatched.contains(&i.checked())
                        && self.owns(i.block())
                })
            });
            if let Some(kept) = kept {
                listed.push(kept.clone());
                continue;
            }
            let staged = new
                .content
                .laid_out()
                .and_then(|bytes| self.take_staged(bytes));
            let (block, len) = match staged {
                Some(staged) => {
                    listed_staged.push(staged);
                    staged
                }
                None => {
                    let len = new.content.size();
                    let block = self.allocate(len).ok_or(StoreError::Full { bytes: len })?;
                    laid_out.push(block);
                    writing.push(
                        self.pin_new(token, block, len)
                            .ok_or(StoreError::NoReaderSlot)?,
                    );
                    // A holder stopped since it checked its lease writes nothing more.
                    if !self.holds(token)
                        || !self.write_block(block, len, |out| new.content.write_into(out))
                    {
                        return Err(StoreError::LeaseLost);
                    }
                    (block, len)
                }
            };
            let bytes = self
                .block_bytes(block.first, len)
                .expect("a block allocated inside the store");
            let item = Item {
                key: new.key,
                kind: new.kind,
                version: new.version,
                bytes: new.bytes,
                form: new.form,
                first: block.first,
                chunks: block.chunks,
                block: block.id,
                len,
                checksum: xxh3_64(bytes) ^ stray_write(new.form, len),
            };
            // The sum is of the bytes as they lie in the block: still this holder's once summed,
            // they are the ones it wrote, and it need not check them again as it adopts them.
            if !self.holds(token) || !self.owns(block) {
                return Err(StoreError::LeaseLost);
            }
            checks.matched.insert(item.checked());
            listed.push(item);
        }
        let blocks: Vec<Block> = listed.iter().map(ItemBlock::block).collect();
        let text = Manifest {
            generation,
            items: listed,
        }
        .encode();
        if text.len() > MANIFEST_SLOT - 16 {
            return Err(StoreError::ManifestTooLarge { bytes: text.len() });
        }
        if !self.holds(token) {
            return Err(StoreError::LeaseLost);
        }
        let slot = (dir & 1) ^ 1;
        crate::region::write_sequenced(self.manifest_words(slot), &text);
        // Blocks allocated from here on are a successor's: this holder, stopped after its swap
        // and resumed behind that successor, retires none of them.
        let allocated = self.header().next_block.load(Ordering::SeqCst);
        let next = (dir & !u64::from(u32::MAX)) | (generation << 1) | slot;
        let swapped = self
            .header()
            .dir
            .compare_exchange(dir, next, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if !swapped {
            return Err(StoreError::LeaseLost);
        }
        self.header()
            .published
            .fetch_max(generation as u32, Ordering::AcqRel);
        self.wake_readers();
        self.retire_others(&blocks, generation, allocated);
        self.reclaim();
        Ok(generation)
    }

    /// Lays `len` bytes out by `write` in a new block for the next generation to list as it is
    /// (see [`Content::laid_out`]), read in place from the pin returned: the holder lays a large
    /// list straight into the store instead of into memory of its own that it then copies.
    /// `None` when this process does not hold the lease or there is no room. A block no
    /// generation lists is freed as soon as this process no longer reads it (a publish failed,
    /// the value's version did not change after all, the lease was lost).
    pub fn stage(
        &'static self,
        token: Token,
        len: usize,
        write: &mut dyn FnMut(&mut [u8]),
    ) -> Option<Arc<Pin>> {
        if !self.holds(token) {
            return None;
        }
        let block = self.allocate(len)?;
        let Some(pin) = self.pin_new(token, block, len) else {
            self.free(block);
            return None;
        };
        if !self.holds(token) || !self.write_block(block, len, write) {
            drop(pin);
            self.free(block);
            return None;
        }
        self.staged().push((block, len));
        Some(pin)
    }

    /// Pins `block`, new and not yet written, as read since the generation in force: a
    /// successor that takes the lease while this holder is stopped before or while it writes the
    /// block retires it, but frees it only once this process no longer reads it.
    fn pin_new(&'static self, token: Token, block: Block, len: usize) -> Option<Arc<Pin>> {
        let slot = self.reader_slot(token.cycle)?;
        let generation = generation_of(self.header().dir.load(Ordering::SeqCst));
        self.pin(slot, generation, &[], &[block.id]);
        Some(Arc::new(Pin {
            store: self,
            slot,
            block: block.id,
            bytes: self
                .block_bytes(block.first, len)
                .expect("a block allocated inside the store"),
        }))
    }

    fn staged(&self) -> std::sync::MutexGuard<'_, Vec<(Block, usize)>> {
        self.staged.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the block this process staged that `bytes` are, whole, if it is still in use and
    /// this process's: a generation lists it from now on.
    fn take_staged(&self, bytes: &[u8]) -> Option<(Block, usize)> {
        let mut staged = self.staged();
        let at = staged.iter().position(|&(block, len)| {
            len == bytes.len()
                && self
                    .block_bytes(block.first, len)
                    .is_some_and(|at| at.as_ptr() == bytes.as_ptr())
                && self.in_use(block)
        })?;
        Some(staged.swap_remove(at))
    }

    /// Frees block `id` if this process staged it and no generation listed it: its last pin is
    /// gone, and nobody else reads a block no manifest names.
    pub(super) fn free_unlisted(&self, id: u64) {
        let mut staged = self.staged();
        if let Some(at) = staged.iter().position(|(block, _)| block.id == id) {
            let (block, _) = staged.swap_remove(at);
            drop(staged);
            self.free(block);
        }
    }

    /// Adopts the generation in force, unless it is `seen`: every item, its block checked
    /// against its checksum unless `checks` matched it already or it is checked after (see
    /// [`Adopted::unchecked`]).
    pub fn adopt(
        &'static self,
        cycle: u64,
        seen: u64,
        checks: &mut Checks,
    ) -> Result<Option<Adopted>, StoreError> {
        let slot = self.reader_slot(cycle).ok_or(StoreError::NoReaderSlot)?;
        let adopted = loop {
            let dir = self.header().dir.load(Ordering::SeqCst);
            if generation_of(dir) == seen {
                return Ok(None);
            }
            self.announce(slot, generation_of(dir));
            if self.header().dir.load(Ordering::SeqCst) != dir {
                continue;
            }
            break self.read_items(slot, checks);
        };
        self.announce(slot, NONE);
        adopted
    }

    /// Adopts generation `generation`, the one this process just published, if it is still in
    /// force; [`StoreError::LeaseLost`] if a successor's is: a holder stopped right after its
    /// publish finds that one there, and adopts it as a follower, in full.
    pub fn adopt_published(
        &'static self,
        cycle: u64,
        seen: u64,
        generation: u64,
        checks: &mut Checks,
    ) -> Result<Adopted, StoreError> {
        self.adopt(cycle, seen, checks)?
            .filter(|adopted| adopted.generation == generation)
            .ok_or(StoreError::LeaseLost)
    }

    /// The manifest's items, every block checked before any is pinned (but those checked after).
    fn read_items(
        &'static self,
        slot: usize,
        checks: &mut Checks,
    ) -> Result<Option<Adopted>, StoreError> {
        let Some((_, manifest)) = self.manifest()? else {
            return Ok(None);
        };
        let mut found = Vec::with_capacity(manifest.items.len());
        let mut unchecked = Vec::new();
        for item in manifest.items {
            let broken = |why: &str| StoreError::Item {
                key: item.key.clone(),
                why: why.into(),
            };
            if !item.fits(super::CHUNK) || !self.owns(item.block()) {
                return Err(broken("its block is not where the manifest says"));
            }
            let bytes = self
                .block_bytes(item.first, item.len)
                .ok_or_else(|| broken("its block lies outside the store"))?;
            if !checks.matched.contains(&item.checked()) {
                if checks.checked_after(&item) {
                    unchecked.push(found.len());
                } else if !checks.check(&item, bytes) {
                    return Err(StoreError::mismatched(&item.key));
                }
            }
            found.push((item, bytes));
        }
        let generation = manifest.generation;
        let blocks: Vec<u64> = found.iter().map(|(item, _)| item.block).collect();
        self.pin(slot, generation, &blocks, &blocks);
        let items = found
            .into_iter()
            .map(|(item, bytes)| {
                let pin = Pin {
                    store: self,
                    slot,
                    block: item.block,
                    bytes,
                };
                (item, Arc::new(pin))
            })
            .collect();
        Ok(Some(Adopted {
            generation,
            items,
            unchecked,
        }))
    }
}

/// An item for the next generation.
pub struct NewItem<'a> {
    pub key: String,
    pub kind: String,
    pub version: u64,
    pub bytes: usize,
    pub form: ItemForm,
    /// Laid out only if the generation in force does not have it.
    pub content: Box<dyn Content + 'a>,
}

/// What an item's block holds, written straight into the block: a large list goes into the
/// store with no copy of its size on the way.
pub trait Content {
    /// The bytes it takes.
    fn size(&self) -> usize;
    /// Writes them into `out`, `size()` bytes at the start of a block (16-byte aligned).
    fn write_into(&self, out: &mut [u8]);
    /// The bytes, where they lie laid out already: a block this holder staged
    /// ([`Store::stage`]) is listed as it is.
    fn laid_out(&self) -> Option<&[u8]> {
        None
    }
}

/// A text value, as it is.
impl Content for Arc<[u8]> {
    fn size(&self) -> usize {
        self.len()
    }

    fn write_into(&self, out: &mut [u8]) {
        out.copy_from_slice(self);
    }
}
