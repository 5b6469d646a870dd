use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gray_core::flat::Backing;
use gray_core::manifest::Manifest;

use super::generation::{ItemBlock, CHECKED_AFTER};
use super::*;

/// The tests fork: one at a time, so that no other test thread holds a lock the child needs.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn store() -> &'static Store {
    Box::leak(Box::new(Store::create().unwrap()))
}

fn me() -> u32 {
    std::process::id()
}

fn text(key: &str, value: &[u8]) -> NewItem<'static> {
    let value: Arc<[u8]> = value.into();
    NewItem {
        key: key.into(),
        kind: "string".into(),
        version: xxhash_rust::xxh3::xxh3_64(&value),
        bytes: value.len(),
        form: ItemForm::Text,
        content: Box::new(value),
    }
}

fn read(adopted: &Adopted, key: &str) -> Vec<u8> {
    let (_, pin) = adopted
        .items
        .iter()
        .find(|(item, _)| item.key == key)
        .expect("the key is in the generation");
    pin.bytes().to_vec()
}

/// Runs `child` in a forked process and returns its exit status.
fn in_child(child: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child only touches the store and exits at once.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let code = child();
        // SAFETY: ends the child without running the test harness's exit handlers.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    libc::WEXITSTATUS(status)
}

#[test]
fn a_generation_reads_back_and_an_unchanged_item_keeps_its_block() {
    let _serial = serial();
    let store = store();
    let token = store.try_take(me(), 1, None).unwrap();
    let mut checked = Checks::default();
    assert!(store.adopt(1, 0, &mut checked).unwrap().is_none());
    let first = store
        .publish(
            token,
            vec![text("gray", b"10.0.0.1"), text("gray:rules", b"{}")],
            &mut Checks::default(),
        )
        .unwrap();
    let adopted = store.adopt(1, 0, &mut checked).unwrap().unwrap();
    assert_eq!(adopted.generation, first);
    assert_eq!(read(&adopted, "gray"), b"10.0.0.1");
    assert!(store.adopt(1, first, &mut checked).unwrap().is_none());
    let second = store
        .publish(
            token,
            vec![text("gray", b"10.0.0.1"), text("gray:rules", b"[]")],
            &mut Checks::default(),
        )
        .unwrap();
    let next = store.adopt(1, first, &mut checked).unwrap().unwrap();
    assert_eq!(next.generation, second);
    let block = |a: &Adopted, key: &str| {
        let item = &a.items.iter().find(|(i, _)| i.key == key).unwrap().0;
        (item.block(), item.version)
    };
    assert_eq!(block(&adopted, "gray"), block(&next, "gray"));
    assert_ne!(block(&adopted, "gray:rules"), block(&next, "gray:rules"));
    assert_eq!(read(&next, "gray:rules"), b"[]");
}

#[test]
fn a_thousand_changes_leave_memory_where_one_leaves_it() {
    let _serial = serial();
    let store = store();
    let token = store.try_take(me(), 1, None).unwrap();
    let mut checked = Checks::default();
    let mut held = None;
    let mut most = 0;
    for change in 0..1000u32 {
        let mut value = vec![b'x'; 200 << 10];
        value[..4].copy_from_slice(&change.to_le_bytes());
        store
            .publish(
                token,
                vec![text("gray", &value), text("gray:rules", b"{}")],
                &mut Checks::default(),
            )
            .unwrap();
        let seen = held.as_ref().map_or(0, |a: &Adopted| a.generation);
        held = store.adopt(1, seen, &mut checked).unwrap();
        most = most.max(store.chunks_held());
    }
    // The list's 4 chunks and the rule set's one, twice: the generation read and the one before
    // it, freed at the next publish.
    assert!(most <= 10, "{most} chunks held at most");
    drop(held);
    store
        .publish(token, vec![], &mut Checks::default())
        .unwrap();
    assert_eq!(store.chunks_held(), 0);
}

#[test]
fn a_generation_another_process_reads_is_kept_until_it_exits() {
    let _serial = serial();
    let store = store();
    let token = store.try_take(me(), 1, None).unwrap();
    store
        .publish(token, vec![text("gray", b"old")], &mut Checks::default())
        .unwrap();
    let (mut ready, mut done) = ([0; 2], [0; 2]);
    // SAFETY: two pipes: the child says it read, the parent says it may exit.
    assert_eq!(
        unsafe { libc::pipe(ready.as_mut_ptr()) + libc::pipe(done.as_mut_ptr()) },
        0
    );
    // SAFETY: the child only touches the store and the pipes, and exits.
    let reader = unsafe { libc::fork() };
    if reader == 0 {
        let read_old = match store.adopt(1, 0, &mut Checks::default()) {
            Ok(Some(adopted)) => read(&adopted, "gray") == b"old",
            _ => false,
        };
        let held = store.adopt(1, 0, &mut Checks::default());
        let mut byte = 0u8;
        // SAFETY: writes one byte, then blocks until the parent writes or closes its end.
        unsafe {
            libc::write(ready[1], [u8::from(read_old)].as_ptr().cast(), 1);
            libc::read(done[0], (&mut byte as *mut u8).cast(), 1);
        }
        drop(held);
        // SAFETY: ends the child without running the test harness's exit handlers.
        unsafe { libc::_exit(0) };
    }
    let mut read_old = 0u8;
    // SAFETY: reads the child's one byte (0 if it died first: the parent's write end closed).
    unsafe {
        libc::close(ready[1]);
        libc::read(ready[0], (&mut read_old as *mut u8).cast(), 1);
    }
    assert_eq!(read_old, 1, "the child read the generation");
    let held = store.chunks_held();
    store
        .publish(token, vec![text("gray", b"new")], &mut Checks::default())
        .unwrap();
    assert_eq!(
        store.chunks_held(),
        held + 1,
        "the child still reads the old one"
    );
    // SAFETY: tells the child to exit and waits for it.
    unsafe {
        libc::write(done[1], [0u8].as_ptr().cast(), 1);
        libc::waitpid(reader, std::ptr::null_mut(), 0);
        for fd in [ready[0], done[0], done[1]] {
            libc::close(fd);
        }
    }
    store
        .publish(token, vec![text("gray", b"new")], &mut Checks::default())
        .unwrap();
    assert_eq!(store.chunks_held(), held);
}

#[test]
fn the_lease_passes_when_free_dead_or_silent_and_fences_the_old_holder() {
    let _serial = serial();
    let store = store();
    // A holder that dies: the next taker does not wait for anything.
    assert_eq!(
        in_child(|| i32::from(store.try_take(me(), 1, None).is_none())),
        0
    );
    let token = store.try_take(me(), 1, None).unwrap();
    assert_eq!(store.holder(), Some(me()));
    store
        .publish(token, vec![text("gray", b"a")], &mut Checks::default())
        .unwrap();
    // A live holder keeps it, unless the taker saw it silent: the same lease and heartbeat for
    // too long (`Host` judges that).
    let (lease, _) = store.lease();
    assert_eq!(
        in_child(|| i32::from(store.try_take(me(), 2, None).is_some())),
        0
    );
    assert_eq!(
        in_child(|| {
            let Some(taken) = store.try_take(me(), 2, Some(lease)) else {
                return 1;
            };
            match store.publish(taken, vec![text("gray", b"b")], &mut Checks::default()) {
                Ok(_) => 0,
                Err(_) => 2,
            }
        }),
        0
    );
    assert!(!store.beat(token));
    assert_eq!(
        store.publish(token, vec![text("gray", b"c")], &mut Checks::default()),
        Err(StoreError::LeaseLost)
    );
    let adopted = store.adopt(1, 0, &mut Checks::default()).unwrap().unwrap();
    assert_eq!(read(&adopted, "gray"), b"b");
    // A lease seen silent that moved since is not taken.
    assert!(store.try_take(me(), 1, Some(lease)).is_none() || store.holder() == Some(me()));
    // Released, it is taken at once.
    let again = store.try_take(me(), 1, None).unwrap();
    store.release(again);
    assert_eq!(store.holder(), None);
    assert!(store.try_take(me(), 1, None).is_some());
}

#[test]
fn an_older_fence_never_lowers_a_newer_one() {
    let _serial = serial();
    let store = store();
    let first = store.try_take(me(), 1, None).unwrap();
    store.release(first);
    let second = store.try_take(me(), 1, None).unwrap();
    store.fence_generation(first);
    store
        .publish(second, vec![text("gray", b"x")], &mut Checks::default())
        .unwrap();
    assert_eq!(
        store.publish(first, vec![text("gray", b"y")], &mut Checks::default()),
        Err(StoreError::LeaseLost)
    );
}

#[test]
fn a_corrupted_block_or_manifest_is_refused_by_name() {
    let _serial = serial();
    let store = store();
    let token = store.try_take(me(), 1, None).unwrap();
    store
        .publish(
            token,
            vec![text("gray", b"10.0.0.1"), text("office", b"x")],
            &mut Checks::default(),
        )
        .unwrap();
    let adopted = store.adopt(1, 0, &mut Checks::default()).unwrap().unwrap();
    let (item, pin) = &adopted.items[1];
    let at = pin.bytes().as_ptr() as *mut u8;
    // SAFETY: flips a byte of the block, inside the mapping, as a stray write would.
    unsafe { *at ^= 1 };
    assert_eq!(item.key, "office");
    drop(adopted);
    assert_eq!(
        store.adopt(1, 0, &mut Checks::default()).err(),
        Some(StoreError::Item {
            key: "office".into(),
            why: "its checksum does not match".into()
        })
    );
    let dir = store.header().dir.load(Ordering::SeqCst);
    let words = store.manifest_words(dir & 1);
    words[5].fetch_xor(1 << 9, Ordering::SeqCst);
    assert!(matches!(
        store.adopt(1, 0, &mut Checks::default()),
        Err(StoreError::Manifest(_))
    ));
}

#[test]
fn a_large_whitelist_is_adopted_first_and_checked_after() {
    let _serial = serial();
    let store = store();
    let token = store.try_take(me(), 1, None).unwrap();
    let large = |key: &str, version: u64| NewItem {
        key: key.into(),
        kind: "set".into(),
        version,
        bytes: CHECKED_AFTER,
        form: ItemForm::Whitelist,
        content: Box::new(Arc::<[u8]>::from(vec![7u8; CHECKED_AFTER])),
    };
    store
        .publish(
            token,
            vec![large("gray", 1), text("small", b"x")],
            &mut Checks::default(),
        )
        .unwrap();
    let mut checks = Checks::default();
    let adopted = store.adopt(1, 0, &mut checks).unwrap().unwrap();
    assert_eq!(adopted.unchecked, vec![0]);
    let (item, pin) = &adopted.items[0];
    assert!(checks.check(item, pin.bytes()));
    let again = store.adopt(1, 0, &mut checks).unwrap().unwrap();
    assert!(
        again.unchecked.is_empty(),
        "a block matched once is not checked again"
    );
    drop(again);

    let at = pin.bytes().as_ptr() as *mut u8;
    // SAFETY: flips a byte of the block, inside the mapping, as a stray write would.
    unsafe { *at ^= 1 };
    let mut checks = Checks::default();
    let corrupted = store.adopt(1, 0, &mut checks).unwrap().unwrap();
    let (item, pin) = &corrupted.items[corrupted.unchecked[0]];
    assert!(!checks.check(item, pin.bytes()));
    drop((adopted, corrupted));
    // Once found not to match, it is checked before it is adopted.
    assert_eq!(
        store.adopt(1, 0, &mut checks).err(),
        Some(StoreError::mismatched("gray"))
    );
}

#[test]
fn a_reader_waiting_in_another_process_is_woken_by_a_publish() {
    let _serial = serial();
    let store = store();
    let token = store.try_take(me(), 1, None).unwrap();
    let seen = store.header().published.load(Ordering::Acquire);
    // SAFETY: the child waits on the store and exits.
    let waiter = unsafe { libc::fork() };
    if waiter == 0 {
        let started = Instant::now();
        store.wait(seen, Duration::from_secs(5));
        let woken = store.header().published.load(Ordering::Acquire) != seen
            && started.elapsed() < Duration::from_secs(4);
        // SAFETY: ends the child without running the test harness's exit handlers.
        unsafe { libc::_exit(i32::from(!woken)) };
    }
    std::thread::sleep(Duration::from_millis(100));
    store
        .publish(token, vec![text("gray", b"1")], &mut Checks::default())
        .unwrap();
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    unsafe { libc::waitpid(waiter, &mut status, 0) };
    assert_eq!(libc::WEXITSTATUS(status), 0);
}

#[test]
fn a_block_kept_from_an_old_generation_holds_back_nothing_else() {
    let _serial = serial();
    let store = store();
    let token = store.try_take(me(), 1, None).unwrap();
    let mut checked = Checks::default();
    store
        .publish(
            token,
            vec![text("gray", b"list"), text("gray:rules", b"0")],
            &mut Checks::default(),
        )
        .unwrap();
    let first = store.adopt(1, 0, &mut checked).unwrap().unwrap();
    // The list as the loaded state keeps it: the pin of the generation it was read in.
    let list = first
        .items
        .iter()
        .find(|(i, _)| i.key == "gray")
        .unwrap()
        .1
        .clone();
    let mut seen = first.generation;
    drop(first);
    for change in 1..50u32 {
        let rules = change.to_string();
        store
            .publish(
                token,
                vec![text("gray", b"list"), text("gray:rules", rules.as_bytes())],
                &mut Checks::default(),
            )
            .unwrap();
        let adopted = store.adopt(1, seen, &mut checked).unwrap().unwrap();
        seen = adopted.generation;
    }
    store.reclaim();
    assert!(
        store.chunks_held() <= 3,
        "{} chunks held",
        store.chunks_held()
    );
    assert_eq!(list.bytes(), b"list");
}

#[test]
fn a_freed_block_is_kept_as_a_spare_for_the_next_one_and_given_back_once_changes_pause() {
    let _serial = serial();
    let store = store();
    let token = store.try_take(me(), 1, None).unwrap();
    let mut checked = Checks::default();
    let list = |n: u8| text("gray", &vec![n; 300 << 10]);
    store.publish(token, vec![list(1)], &mut checked).unwrap();
    let first = store.adopt(1, 0, &mut checked).unwrap().unwrap();
    let at = |a: &Adopted| a.items[0].0.first;
    let (first_at, seen) = (at(&first), first.generation);
    drop(first);
    store.publish(token, vec![list(2)], &mut checked).unwrap();
    let second = store.adopt(1, seen, &mut checked).unwrap().unwrap();
    store.reclaim();
    assert_eq!(store.chunks_spare(), 5, "the first list's chunks, kept");
    store.publish(token, vec![list(3)], &mut checked).unwrap();
    let third = store
        .adopt(1, second.generation, &mut checked)
        .unwrap()
        .unwrap();
    assert_eq!(
        at(&third),
        first_at,
        "the third list lies where the first did"
    );
    assert_eq!(read(&third, "gray"), vec![3; 300 << 10]);
    drop(second);
    store.reclaim();
    store.trim_spares();
    assert_eq!(store.chunks_spare(), 0);
    assert_eq!(store.chunks_held(), 5);
}

#[test]
fn chunks_being_trimmed_are_no_allocations_until_their_trimmer_finishes_or_dies() {
    let _serial = serial();
    let store = store();
    let token = store.try_take(me(), 1, None).unwrap();
    let mut checked = Checks::default();
    let list = |n: u8| text("gray", &vec![n; 300 << 10]);
    let at = |a: &Adopted| a.items[0].0.first;
    store.publish(token, vec![list(1)], &mut checked).unwrap();
    let first = store.adopt(1, 0, &mut checked).unwrap().unwrap();
    let (first_at, seen) = (at(&first), first.generation);
    drop(first);
    store.publish(token, vec![list(2)], &mut checked).unwrap();
    let second = store.adopt(1, seen, &mut checked).unwrap().unwrap();
    let second_at = at(&second);
    store.reclaim();
    // A trimmer that is alive (this test's parent) and stopped midway: its chunks stay its own.
    assert_eq!(
        store.mark_spares_trimmed_by(std::os::unix::process::parent_id()),
        5
    );
    store.trim_spares();
    store.publish(token, vec![list(3)], &mut checked).unwrap();
    let third = store
        .adopt(1, second.generation, &mut checked)
        .unwrap()
        .unwrap();
    assert_ne!(at(&third), first_at, "a chunk being trimmed was allocated");
    assert_eq!(read(&third, "gray"), vec![3; 300 << 10]);
    drop(second);
    store.reclaim();
    // A trimmer that died midway: the next trim finishes its chunks, and they are free again.
    let mut status = 0;
    // SAFETY: a child that exits at once, waited for: its pid is then a dead process's.
    let dead = unsafe {
        let child = libc::fork();
        if child == 0 {
            libc::_exit(0);
        }
        libc::waitpid(child, &mut status, 0);
        child as u32
    };
    assert_eq!(store.mark_spares_trimmed_by(dead), 5);
    store.trim_spares();
    assert_eq!(store.chunks_spare(), 0);
    assert_eq!(store.chunks_held(), 5, "the third list's, and nothing else");
    store.publish(token, vec![list(4)], &mut checked).unwrap();
    let fourth = store
        .adopt(1, third.generation, &mut checked)
        .unwrap()
        .unwrap();
    assert_eq!(
        at(&fourth),
        second_at,
        "the dead trimmer's chunks are free again"
    );
}

/// Bytes the holder staged, as a list laid straight into the store carries them.
struct Staged(Arc<Pin>);

impl Content for Staged {
    fn size(&self) -> usize {
        self.0.bytes().len()
    }

    fn write_into(&self, out: &mut [u8]) {
        out.copy_from_slice(self.0.bytes());
    }

    fn laid_out(&self) -> Option<&[u8]> {
        Some(self.0.bytes())
    }
}

fn staged_item(key: &str, pin: &Arc<Pin>) -> NewItem<'static> {
    NewItem {
        key: key.into(),
        kind: "set".into(),
        version: xxhash_rust::xxh3::xxh3_64(pin.bytes()),
        bytes: 0,
        form: ItemForm::Text,
        content: Box::new(Staged(pin.clone())),
    }
}

#[test]
fn a_staged_block_is_listed_as_it_lies_and_one_never_listed_is_freed_once_unread() {
    let _serial = serial();
    let store = store();
    let token = store.try_take(me(), 1, None).unwrap();
    let mut checked = Checks::default();
    store
        .publish(token, vec![text("gray:rules", b"{}")], &mut checked)
        .unwrap();
    let stage = |fill: u8| {
        store
            .stage(token, 100 << 10, &mut |out| out.fill(fill))
            .expect("room to stage")
    };
    let listed = stage(b'a');
    let held = store.chunks_held();
    store
        .publish(
            token,
            vec![text("gray:rules", b"{}"), staged_item("gray", &listed)],
            &mut checked,
        )
        .unwrap();
    assert_eq!(
        store.chunks_held(),
        held,
        "listed where it lies, not copied"
    );
    let adopted = store.adopt(1, 0, &mut checked).unwrap().unwrap();
    assert_eq!(read(&adopted, "gray"), vec![b'a'; 100 << 10]);
    let (item, pin) = adopted.items.iter().find(|(i, _)| i.key == "gray").unwrap();
    assert_eq!(pin.bytes().as_ptr(), listed.bytes().as_ptr());
    assert!(Checks::default().check(item, pin.bytes()));

    // Staged, never listed (the version did not change after all): retired by the next
    // publish, and freed as soon as this process no longer reads it.
    let abandoned = stage(b'b');
    let with_abandoned = store.chunks_held();
    let keep = vec![text("gray:rules", b"{}"), staged_item("gray", &listed)];
    store.publish(token, keep, &mut checked).unwrap();
    assert_eq!(store.chunks_held(), with_abandoned, "still read");
    assert_eq!(abandoned.bytes()[0], b'b');
    drop(abandoned);
    assert_eq!(store.chunks_held(), with_abandoned - 2, "freed once unread");

    // Staged and in a publish that failed: listed by none, freed once unread all the same.
    let failed = stage(b'c');
    let held = store.chunks_held();
    let too_large = text(&"k".repeat(MANIFEST_SLOT), b"x");
    let publish = vec![staged_item("gray", &failed), too_large];
    assert!(matches!(
        store.publish(token, publish, &mut checked),
        Err(StoreError::ManifestTooLarge { .. })
    ));
    assert_eq!(store.chunks_held(), held);
    drop(failed);
    assert_eq!(store.chunks_held(), held - 2, "freed once unread");
    drop(adopted);

    // Another holder's token stages nothing.
    store.release(token);
    assert!(store.stage(token, 16, &mut |_| ()).is_none());
}

/// Runs a successor in a child process: it takes the lease this holder holds, seen silent, and
/// publishes each of `values` as key gray in turn.
fn successor_publishes(store: &'static Store, values: &[&'static [u8]]) {
    let (lease, _) = store.lease();
    let published = in_child(|| {
        let Some(taken) = store.try_take(me(), 1, Some(lease)) else {
            return 1;
        };
        for &value in values {
            let items = vec![text("gray", value)];
            if store.publish(taken, items, &mut Checks::default()).is_err() {
                return 2;
            }
        }
        0
    });
    assert_eq!(published, 0);
}

#[test]
fn a_holder_stopped_after_its_publish_adopts_only_its_own_generation() {
    let _serial = serial();
    let store = store();
    let token = store.try_take(me(), 1, None).unwrap();
    let mine = store
        .publish(token, vec![text("gray", b"mine")], &mut Checks::default())
        .unwrap();
    // Stopped here: a worker that saw it silent takes the lease and publishes.
    successor_publishes(store, &[b"theirs"]);
    let mut checks = Checks::default();
    assert_eq!(
        store.adopt_published(1, mine - 1, mine, &mut checks).err(),
        Some(StoreError::LeaseLost)
    );
    // As a follower it still has the successor's generation to adopt.
    let adopted = store.adopt(1, mine - 1, &mut checks).unwrap().unwrap();
    assert_eq!(adopted.generation, mine + 1);
    assert_eq!(read(&adopted, "gray"), b"theirs");
}

/// A value whose writing is interrupted by `meanwhile`, as a holder stopped mid-write is.
struct Interrupted<F: Fn()> {
    len: usize,
    meanwhile: F,
}

impl<F: Fn()> Content for Interrupted<F> {
    fn size(&self) -> usize {
        self.len
    }

    fn write_into(&self, out: &mut [u8]) {
        (self.meanwhile)();
        out.fill(b'x');
    }
}

#[test]
fn a_block_a_stopped_holder_still_writes_is_not_its_successors_to_reuse() {
    let _serial = serial();
    let store = store();
    let token = store.try_take(me(), 1, None).unwrap();
    // While this holder writes its first generation's block, a worker that saw it silent takes
    // the lease and publishes twice: the second is laid out in the spares the first freed, if
    // it freed this holder's block.
    let successor = || successor_publishes(store, &[b"theirs 1", b"theirs 2"]);
    let interrupted = NewItem {
        key: "gray".into(),
        kind: "string".into(),
        version: 1,
        bytes: 0,
        form: ItemForm::Text,
        content: Box::new(Interrupted {
            len: 4 * CHUNK,
            meanwhile: successor,
        }),
    };
    assert_eq!(
        store.publish(token, vec![interrupted], &mut Checks::default()),
        Err(StoreError::LeaseLost)
    );
    let adopted = store.adopt(1, 0, &mut Checks::default()).unwrap().unwrap();
    assert_eq!(read(&adopted, "gray"), b"theirs 2");
}

#[test]
fn a_holder_resumed_after_its_swap_retires_none_of_its_successors_blocks() {
    let _serial = serial();
    let store = store();
    let token = store.try_take(me(), 1, None).unwrap();
    let mine = store
        .publish(token, vec![text("gray", b"mine")], &mut Checks::default())
        .unwrap();
    // Stopped right after its swap, before it retires what its generation dropped: it read how
    // many blocks were allocated then. Its successor publishes meanwhile.
    let allocated = store.header().next_block.load(Ordering::SeqCst);
    successor_publishes(store, &[b"theirs"]);
    // Resumed, it goes on: nothing its successor laid out is retired, so nothing is freed.
    store.retire_others(&[], mine, allocated);
    store.reclaim();
    let adopted = store
        .adopt(1, mine, &mut Checks::default())
        .unwrap()
        .unwrap();
    assert_eq!(read(&adopted, "gray"), b"theirs");
}

#[test]
fn a_manifest_a_stale_holder_writes_over_the_one_in_force_is_refused_until_published_again() {
    let _serial = serial();
    let store = store();
    let token = store.try_take(me(), 1, None).unwrap();
    store
        .publish(token, vec![text("gray", b"mine")], &mut Checks::default())
        .unwrap();
    // Its next publish takes a number and is stopped past its last look at the lease; its
    // successor publishes.
    let stale = store
        .header()
        .next_generation
        .fetch_add(1, Ordering::SeqCst)
        + 1;
    successor_publishes(store, &[b"theirs"]);
    // Resumed, it writes its manifest into the slot in force, then fails to swap.
    let dir = store.header().dir.load(Ordering::SeqCst);
    let text_written = Manifest {
        generation: stale,
        items: Vec::new(),
    }
    .encode();
    write_sequenced(store.manifest_words(dir & 1), &text_written);
    assert!(store.manifest_unreadable());
    assert!(matches!(
        store.adopt(1, 0, &mut Checks::default()),
        Err(StoreError::Manifest(_))
    ));
    // The holder (the successor is gone: this process again) publishes again.
    let again = store.try_take(me(), 1, None).unwrap();
    store
        .publish(again, vec![text("gray", b"theirs")], &mut Checks::default())
        .unwrap();
    assert!(!store.manifest_unreadable());
    let adopted = store.adopt(1, 0, &mut Checks::default()).unwrap().unwrap();
    assert_eq!(read(&adopted, "gray"), b"theirs");
}
