//! What gray's threads ask of the OS and of glibc so that a worker's request path keeps the CPU
//! and its signals, and a large list costs its worker one copy of memory. Each is a no-op where
//! it does not apply.

use std::ffi::c_int;

/// The refresher's nice value: on a busy machine a large rebuild takes longer, requests do not.
const REFRESHER_NICE: c_int = 10;

/// Allocations from this size up get their own mapping, returned to the system when freed.
const MMAP_THRESHOLD: c_int = 4 << 20;

/// Lowers the calling thread's CPU priority below the worker's (Linux nice values are per thread).
pub fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    {
        const PRIO_PROCESS: c_int = 0;
        extern "C" {
            fn gettid() -> c_int;
            fn setpriority(which: c_int, who: c_int, prio: c_int) -> c_int;
        }
        // SAFETY: both take and return plain integers; `who` is this thread's own id.
        unsafe {
            setpriority(PRIO_PROCESS, gettid(), REFRESHER_NICE);
        }
    }
}

/// Blocks, in the calling thread (and the threads it starts), the signals sent to the worker
/// process: the kernel gives such a signal to any thread that does not block it, and nginx's
/// handler run on one of gray's threads sets its flags where the worker's event loop, asleep in
/// `epoll_wait`, does not see them until something else wakes it. Those raised by the thread's
/// own faults stay unblocked: blocked, the kernel would kill the process at once.
pub fn block_process_signals() {
    // SAFETY: the set is initialised by sigemptyset/sigfillset before use; pthread_sigmask
    // changes only the calling thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        for fault in [
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGFPE,
            libc::SIGILL,
            libc::SIGTRAP,
            libc::SIGSYS,
            libc::SIGABRT,
        ] {
            libc::sigdelset(&mut set, fault);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// A large list passes through big temporary buffers (the value as read, the parsed networks) on
/// the refresher thread. glibc serves them from the thread's arena once a large free has raised its
/// dynamic mmap threshold, and `malloc_trim` never gives back the top of a thread arena: a worker
/// would keep a list's worth of freed memory for good. A fixed threshold keeps them mapped apart.
/// It is process-wide, but nginx itself makes no allocations this large; an operator's own
/// MALLOC_MMAP_THRESHOLD_ wins.
pub fn map_large_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some() {
            return;
        }
        const M_MMAP_THRESHOLD: c_int = -3;
        extern "C" {
            fn mallopt(param: c_int, value: c_int) -> c_int;
        }
        // SAFETY: mallopt takes no pointers; glibc serialises it with its own locks.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        }
    }
}

/// Reading and parsing a large list frees tens of megabytes of small temporaries (a SET's
/// members, the parsed networks), which glibc otherwise keeps in the thread's arena: give them
/// back.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> c_int;
        }
        // SAFETY: malloc_trim takes no pointers and only returns free memory to the system; glibc
        // makes it safe to call from any thread.
        unsafe {
            malloc_trim(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `signal` is blocked in the calling thread.
    fn blocked(signal: libc::c_int) -> bool {
        // SAFETY: reads the calling thread's mask into a set it owns.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut set);
            libc::sigismember(&set, signal) == 1
        }
    }

    #[test]
    fn the_workers_signals_are_blocked_and_the_threads_own_faults_are_not() {
        let (before, after, inherited) = std::thread::spawn(|| {
            let before = blocked(libc::SIGQUIT);
            block_process_signals();
            let after = [
                libc::SIGQUIT,
                libc::SIGTERM,
                libc::SIGHUP,
                libc::SIGUSR1,
                libc::SIGSEGV,
            ]
            .map(blocked);
            let inherited = std::thread::spawn(|| blocked(libc::SIGQUIT))
                .join()
                .unwrap();
            (before, after, inherited)
        })
        .join()
        .unwrap();
        assert!(!before);
        assert_eq!(after, [true, true, true, true, false]);
        assert!(inherited, "a thread started after inherits the mask");
    }
}
