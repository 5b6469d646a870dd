//! What the refresher asks of the OS and of glibc so that a worker's request path keeps the CPU
//! and a large list costs its worker one copy of memory. Each is a no-op where it does not apply.

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
