//! One Redis session per host. Where the master made the host's store (`require "gray"` in
//! init_by_lua), one worker at a time holds the session (the store's lease): it reads Redis as
//! every worker did before, publishes what it loaded as a generation of the store, and swaps its
//! own lists for the store's copy; every other worker follows: it waits on the store, adopts each
//! new generation into its loaded state (rule sets compiled per worker from the shared text, lists
//! read in place) and shows the holder's status as its own. A follower takes the lease when the
//! holder is gone, stopped or retired; a holder of an older configuration cycle hands it over once
//! a worker of the new cycle runs. A heartbeat thread keeps the lease while the process runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use gray_core::flat::{Backing, FlatReader, FlatWriter, Stage};
use gray_core::idset::IdSet;
use gray_core::keys;
use gray_core::snapshot::{LoadedIds, LoadedKey, LoadedList};
use gray_core::value::{Fetched, KeyKind, ListBuilder};
use gray_core::whitelist::Whitelist;
use gray_io::read::Limit;
use once_cell::sync::OnceCell;
use serde::{Deserialize, Serialize};

use super::health::Health;
use super::loaded::{Loaded, Source, Whitelists};
use super::reader::Read;
use crate::log::Level;
use crate::state::{RefreshStatus, Shared};
use crate::store::{
    self, Adopted, Checks, Content, Item, ItemForm, NewItem, Pin, Store, StoreError, Token,
};

/// A holder silent this long is taken over (it is stopped or hung).
const STALE: Duration = Duration::from_millis(500);
/// How often the holder's process proves it alive.
const BEAT: Duration = Duration::from_millis(100);
/// How long a follower waits for a generation before it looks at the lease again.
pub(super) const FOLLOW_TICK: Duration = Duration::from_millis(100);
/// How long a follower routes by a list adopted unchecked before it checks it: time for the
/// host's other workers to adopt it before this one spends a core on summing it.
pub(super) const CHECK_DELAY: Duration = Duration::from_millis(20);

/// The lease this process holds, for the heartbeat thread.
static HELD: Mutex<Option<Token>> = Mutex::new(None);

/// Gives up the lease this process holds: its refresher panicked, and restarts only after a
/// backoff, so another worker holds the session meanwhile.
pub(super) fn release_held() {
    let held = HELD.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let (Some(token), Some(store)) = (held, store::get()) {
        store.release(token);
    }
}
static HEARTBEAT: OnceCell<()> = OnceCell::new();

pub(super) struct Host {
    pub store: &'static Store,
    /// The configuration cycle this worker was forked under.
    cycle: u64,
    token: Option<Token>,
    /// The lease and heartbeat last seen, and since when they have not moved.
    watched: Option<((u64, u64), Instant)>,
    /// The last generation published could not be: publish again.
    pub unpublished: bool,
    /// The generation last adopted (0: none).
    seen: u64,
    /// What this process found of blocks' checksums.
    checks: Checks,
}

impl Host {
    /// This worker's part in the host's session; `None` without a store (each worker then holds
    /// its own session, as the log says once).
    pub fn new() -> Option<Host> {
        let store = store::get()?;
        HEARTBEAT.get_or_init(|| {
            let _ = thread::Builder::new()
                .name("gray-heartbeat".into())
                .spawn(move || {
                    crate::os::block_process_signals();
                    loop {
                        thread::sleep(BEAT);
                        let held = *HELD.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some(token) = held {
                            store.beat(token);
                        }
                    }
                });
        });
        Some(Host {
            store,
            cycle: store::own_cycle(),
            token: None,
            watched: None,
            unpublished: false,
            seen: 0,
            checks: Checks::default(),
        })
    }

    /// The generation this worker adopted last.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    pub fn holding(&self) -> bool {
        self.token.is_some_and(|t| self.store.holds(t))
    }

    /// Takes the lease if it is free, its holder gone or silent; says whether this worker holds
    /// it now.
    pub fn try_take(&mut self) -> bool {
        if self.holding() {
            return true;
        }
        // After a reload the workers of the new configuration hold it.
        if self.store.cycle() > self.cycle && self.store.reader_of_cycle(self.cycle + 1) {
            return false;
        }
        let now = self.store.lease();
        let silent = match self.watched {
            Some((seen, since)) if seen == now => (since.elapsed() >= STALE).then_some(now.0),
            _ => {
                self.watched = Some((now, Instant::now()));
                None
            }
        };
        self.token = self.store.try_take(std::process::id(), self.cycle, silent);
        *HELD.lock().unwrap_or_else(|e| e.into_inner()) = self.token;
        if self.token.is_some() {
            self.watched = None;
        }
        self.token.is_some()
    }

    /// Whether this worker goes on holding the session: not once another took the lease, nor,
    /// after a reload, once a worker of the new configuration runs (the lease is released for
    /// it then).
    pub fn keep_holding(&mut self) -> bool {
        let Some(token) = self.token else {
            return false;
        };
        if self.store.holds(token)
            && !(self.store.cycle() > self.cycle && self.store.reader_of_cycle(self.cycle + 1))
        {
            return true;
        }
        self.store.release(token);
        self.token = None;
        *HELD.lock().unwrap_or_else(|e| e.into_inner()) = None;
        false
    }

    /// Publishes what `loaded` holds as the next generation and swaps its lists for the
    /// store's copy; what could not be published is published again at the next call.
    pub fn publish(&mut self, loaded: &mut Loaded) -> Result<(), StoreError> {
        let token = self.token.ok_or(StoreError::LeaseLost)?;
        self.unpublished = true;
        let generation = self.store.publish(token, items(loaded), &mut self.checks)?;
        let adopted =
            self.store
                .adopt_published(self.cycle, self.seen, generation, &mut self.checks)?;
        self.unpublished = false;
        self.note_adopted(&adopted);
        let broken = self.check_after(&adopted.unchecked_items());
        share(loaded, &adopted.items, &broken, Lists::All);
        Ok(())
    }

    /// Publishes again when the manifest in force cannot be read: a holder stopped before its
    /// publish failed may have written over it as it resumed.
    pub fn repair(&mut self) {
        if self.store.manifest_unreadable() {
            self.unpublished = true;
        }
    }

    /// Where this worker, holding the session, lays a changed list out: straight into the store.
    pub fn staging(&self) -> Option<Staging> {
        let token = self.token.filter(|&token| self.store.holds(token))?;
        Some(Staging {
            store: self.store,
            token,
        })
    }

    /// Whether the holder's generation is of this worker's configuration (or a newer one):
    /// until then a worker of a new configuration may miss keys only it reads.
    pub fn current(&self) -> bool {
        self.store.holder_cycle() >= self.cycle
    }

    /// The generation in force, if this worker has not adopted it yet.
    pub fn adopt(&mut self) -> Result<Option<Adopted>, StoreError> {
        let adopted = self.store.adopt(self.cycle, self.seen, &mut self.checks)?;
        if let Some(adopted) = &adopted {
            self.note_adopted(adopted);
        }
        Ok(adopted)
    }

    fn note_adopted(&mut self, adopted: &Adopted) {
        self.seen = adopted.generation;
        self.checks.keep_only(adopted);
    }

    /// Checks the items adopted unchecked against their checksums: the keys of those that do
    /// not match, which the next generations' adoptions check before routing by.
    pub fn check_after(&mut self, unchecked: &[(Item, Arc<Pin>)]) -> Vec<String> {
        unchecked
            .iter()
            .filter(|(item, pin)| !self.checks.check(item, Backing::bytes(&**pin)))
            .map(|(item, _)| item.key.clone())
            .collect()
    }

    /// Writes the holder's status for the other workers.
    pub fn share_status(&self, shared: &Shared) {
        let status = HolderStatus::from(&shared.status());
        if let Ok(json) = serde_json::to_vec(&status) {
            self.store.write_status(&json);
        }
    }

    /// Shows the holder's status as this worker's; says whether it changed.
    pub fn mirror_status(&self, shared: &Shared) -> bool {
        let Some(status) = self
            .store
            .read_status()
            .and_then(|json| serde_json::from_slice::<HolderStatus>(&json).ok())
        else {
            return false;
        };
        let before = HolderStatus::from(&shared.status());
        if before == status {
            return false;
        }
        shared.update_status(|s| {
            s.connected = status.connected;
            s.node = status.node;
            s.subscribed = status.subscribed;
            s.tracking = status.tracking;
            s.last_ok_at = status.last_ok_at;
            s.last_error = status.last_error;
            s.last_error_at = status.last_error_at;
            s.failures = status.failures;
        });
        true
    }

    /// Hands the guard trips this worker made to the holder, which writes them to Redis.
    pub fn post_trips(&self, shared: &Shared) {
        for trip in shared.take_trips() {
            let posted = serde_json::to_vec(&trip)
                .map(|json| self.store.post(&json))
                .unwrap_or(false);
            if !posted {
                shared.log(
                    Level::Warn,
                    format!(
                        "no room to hand the guard trip in {} to the session's holder: grayctl guard show will not list it",
                        trip.key
                    ),
                );
            }
        }
    }

    /// The guard trips other workers handed over.
    pub fn collect_trips(&self, shared: &Shared) {
        for record in self.store.collect() {
            if let Ok(trip) = serde_json::from_slice(&record) {
                shared.queue_trip(trip);
            }
        }
    }
}

/// What followers show of the holder's link to Redis.
#[derive(PartialEq, Serialize, Deserialize)]
struct HolderStatus {
    connected: bool,
    node: Option<String>,
    subscribed: bool,
    tracking: bool,
    last_ok_at: Option<SystemTime>,
    last_error: Option<String>,
    last_error_at: Option<SystemTime>,
    failures: u64,
}

impl From<&RefreshStatus> for HolderStatus {
    fn from(s: &RefreshStatus) -> Self {
        HolderStatus {
            connected: s.connected,
            node: s.node.clone(),
            subscribed: s.subscribed,
            tracking: s.tracking,
            last_ok_at: s.last_ok_at,
            // A long error is cut: the slot has room for a few kilobytes, escapes included.
            last_error: s.last_error.as_ref().map(|e| {
                let mut cut = e.len().min(512);
                while !e.is_char_boundary(cut) {
                    cut -= 1;
                }
                e[..cut].to_string()
            }),
            last_error_at: s.last_error_at,
            failures: s.failures,
        }
    }
}

/// Every value `loaded` holds, as items of a generation: the whitelist and the lists and id sets
/// rule sets reference laid out flat, rule sets and plans as text.
fn items(loaded: &Loaded) -> Vec<NewItem<'_>> {
    let mut items = Vec::new();
    let list_item = |key: &str, list: &Arc<LoadedList>| NewItem {
        key: key.to_string(),
        kind: list.kind.as_str().into(),
        version: list.version,
        bytes: 0,
        form: ItemForm::Whitelist,
        content: Box::new(FlatList(list.clone())),
    };
    if let Some(list) = &loaded.whitelist {
        items.push(list_item(&loaded.config.key, list));
    }
    for slot in &loaded.rule_sets {
        for (key, text) in [
            (slot.key.clone(), &slot.text),
            (keys::rollout(&slot.key), &slot.rollout_text),
        ] {
            if let Some(text) = text {
                items.push(text_item(key, text.kind, text.version, text.value.clone()));
            }
        }
    }
    for (key, value) in &loaded.keys {
        items.push(match value {
            LoadedKey::Whitelist(list) => list_item(&key.name, list),
            LoadedKey::Ids(ids) => NewItem {
                key: key.name.clone(),
                kind: ids.kind.as_str().into(),
                version: ids.version,
                bytes: 0,
                form: ItemForm::Ids,
                content: Box::new(FlatIds(ids.clone())),
            },
        });
    }
    items
}

fn text_item(key: String, kind: KeyKind, version: u64, value: Arc<[u8]>) -> NewItem<'static> {
    NewItem {
        key,
        kind: kind.as_str().into(),
        version,
        bytes: value.len(),
        form: ItemForm::Text,
        content: Box::new(value),
    }
}

/// The store as the session's holder lays a list straight into it: a block the next generation
/// lists as it is (see [`Store::stage`]).
pub(super) struct Staging {
    store: &'static Store,
    token: Token,
}

impl Stage for Staging {
    fn lay_out(
        &self,
        len: usize,
        write: &mut dyn FnMut(&mut FlatWriter),
    ) -> Option<Arc<dyn Backing>> {
        let pin = self.store.stage(self.token, len, &mut |out| {
            let mut writer = FlatWriter::new(out);
            write(&mut writer);
            debug_assert!(writer.done(), "a flat length that is not what was laid out");
        });
        pin.map(|pin| pin as Arc<dyn Backing>)
    }
}

/// A loaded list, laid out flat into its block.
struct FlatList(Arc<LoadedList>);

impl Content for FlatList {
    fn size(&self) -> usize {
        self.0.list.flat_len()
    }

    fn laid_out(&self) -> Option<&[u8]> {
        self.0.list.laid_out()
    }

    fn write_into(&self, out: &mut [u8]) {
        let mut writer = FlatWriter::new(out);
        self.0.list.write_flat(&mut writer);
        debug_assert!(writer.done(), "a flat length that is not what was laid out");
    }
}

/// A loaded set of ids, laid out flat into its block.
struct FlatIds(Arc<LoadedIds>);

impl Content for FlatIds {
    fn size(&self) -> usize {
        self.0.ids.flat_len()
    }

    fn write_into(&self, out: &mut [u8]) {
        let mut writer = FlatWriter::new(out);
        self.0.ids.write_flat(&mut writer);
        debug_assert!(writer.done(), "a flat length that is not what was laid out");
    }
}

/// A text value as last read, kept to be published to the other workers.
pub(super) struct StoredText {
    pub kind: KeyKind,
    pub version: u64,
    pub value: Arc<[u8]>,
}

/// Which lists [`share`] swaps.
#[derive(PartialEq)]
pub(super) enum Lists {
    /// Every list and id set: the holder's, once it published them.
    All,
    /// The whitelists this worker laid out itself: a follower that held the session, whose
    /// lists of a version unchanged since would otherwise stay in the memory it laid them out
    /// in (a block of the store no generation lists, held back from being freed).
    OwnLayouts,
}

/// Swaps the lists and id sets `loaded` holds (those `which` says) for the store's copy of the
/// same versions in `adopted`, but those of the keys `broken`; says whether it swapped any.
pub(super) fn share(
    loaded: &mut Loaded,
    adopted: &[(Item, Arc<Pin>)],
    broken: &[String],
    which: Lists,
) -> bool {
    let mut swapped = false;
    let pin = |key: &str, form: ItemForm, version: u64| -> Option<FlatReader> {
        let (_, pin) = adopted.iter().find(|(item, _)| {
            item.key == key
                && item.form == form
                && item.version == version
                && !broken.contains(&item.key)
        })?;
        Some(FlatReader::new(pin.clone()))
    };
    let shared = |key: &str, list: &Arc<LoadedList>| -> Option<Arc<LoadedList>> {
        if which == Lists::OwnLayouts && list.list.laid_out().is_none() {
            return None;
        }
        let read = Whitelist::read_flat(&mut pin(key, ItemForm::Whitelist, list.version)?).ok()?;
        Some(Arc::new(LoadedList {
            list: read,
            kind: list.kind,
            version: list.version,
            loaded_at: list.loaded_at,
        }))
    };
    if let Some(list) = &loaded.whitelist {
        if let Some(read) = shared(&loaded.config.key, list) {
            loaded.whitelist = Some(read);
            swapped = true;
        }
    }
    for (key, value) in loaded.keys.iter_mut() {
        match value {
            LoadedKey::Whitelist(list) => {
                if let Some(read) = shared(&key.name, list) {
                    *list = read;
                    swapped = true;
                }
            }
            LoadedKey::Ids(_) if which == Lists::OwnLayouts => {}
            LoadedKey::Ids(ids) => {
                let read = pin(&key.name, ItemForm::Ids, ids.version)
                    .and_then(|mut reader| IdSet::read_flat(&mut reader).ok());
                if let Some(read) = read {
                    *ids = Arc::new(LoadedIds {
                        ids: read,
                        kind: ids.kind,
                        version: ids.version,
                    });
                    swapped = true;
                }
            }
        }
    }
    swapped
}

/// Lists adopted unchecked, with what was loaded before them and when to check them.
pub(super) struct Unchecked {
    pub items: Vec<(Item, Arc<Pin>)>,
    pub before: Whitelists,
    pub due: Instant,
}

/// The loaded state's [`Source`] in a follower: the keys of an adopted generation, what it says
/// reported to the health.
pub(super) struct Adopting<'a> {
    items: HashMap<(String, ItemForm), (Item, Arc<Pin>)>,
    health: &'a mut Health,
}

impl<'a> Adopting<'a> {
    pub fn new(adopted: Adopted, health: &'a mut Health) -> Adopting<'a> {
        let items = adopted
            .items
            .into_iter()
            .map(|(item, pin)| ((item.key.clone(), item.form), (item, pin)))
            .collect();
        Adopting { items, health }
    }
}

impl Source for Adopting<'_> {
    fn read<B: ListBuilder>(
        &mut self,
        key: &str,
        _: Limit,
        _: Option<u64>,
    ) -> Result<Read<B>, String> {
        let form = B::STORED_AS;
        // A key the holder does not read (a worker of another configuration): nothing new.
        let Some((item, pin)) = self.items.get(&(key.to_string(), form)) else {
            return Ok(Read::Unchanged);
        };
        let kind = KeyKind::from_name(&item.kind).unwrap_or(KeyKind::Missing);
        let builder = match form {
            ItemForm::Text => {
                let mut builder = B::default();
                builder.add(Backing::bytes(&**pin));
                builder
            }
            ItemForm::Whitelist | ItemForm::Ids => B::read_built(&mut FlatReader::new(pin.clone()))
                .map_err(|e| format!("the host's copy of key {key}: {e}"))?,
        };
        Ok(Read::Value(
            Fetched::stored(kind, item.version, item.bytes, 0, builder),
            Duration::ZERO,
        ))
    }

    fn forget(&mut self, _: &str) {}

    fn log(&mut self, level: Level, message: String) {
        self.health.log(level, message);
    }

    fn log_once(&mut self, level: Level, message: String) {
        self.health.log_once(level, message);
    }

    fn rejected(&mut self, error: String) {
        self.health.rejected(error);
    }
}
