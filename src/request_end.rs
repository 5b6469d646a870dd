//! A routed request's response, counted as nginx frees the request: as `route()` decides, gray
//! adds a cleanup to the request's memory pool, and nginx runs it when it destroys the pool,
//! after the log phase, with the response's status final, however the request ended (a
//! location's own log handler, a subrequest, a client that went away). The count is tied to the
//! request itself, never to an address a later request may be given, and costs no log-phase Lua
//! handler (lua-nginx-module's alone is ~1,300 instructions a request).
//!
//! It is on with the option `count_responses`, or once `log()` has run on this nginx (what
//! configurations written for it do). The functions come from the running nginx and
//! lua-nginx-module by name: `ngx_pool_cleanup_add`, and the FFI functions behind `ngx.status`,
//! `ngx.req.start_time()` and `ngx.now()`. nginx's structs are not an ABI, so the pool's place in
//! the request is proven before it is used, as the client address's is (`nginx_request`): a main
//! request's struct is the first allocation from its own pool, right after the pool's header, so
//! the field that holds `r - POOL_HEADER` is the pool. Pointers are compared; none is followed
//! before the proof. A worker whose requests never prove it counts no responses and says so.

use std::ffi::{c_int, c_void, CStr};
use std::panic::catch_unwind;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};

use once_cell::sync::OnceCell;

use crate::log::Level;
use crate::metrics;
use crate::state::SHARED;

/// `ngx_pool_t *pool` in `ngx_http_request_t`, after `signature`, `connection`, `ctx`,
/// `main_conf`, `srv_conf`, `loc_conf`, the two event handlers, `cache` (an nginx built with
/// the cache, as Debian's and OpenResty's are), `upstream` and `upstream_states`; 8 bytes less
/// without the cache.
const POOL_AT: [usize; 2] = [88, 80];
/// `sizeof(ngx_pool_t)` on 64-bit: where a pool's first allocation starts.
const POOL_HEADER: usize = 80;
/// Requests that may fail the proof (subrequests, whose pool is their parent's) before a worker
/// gives up on it.
const PROOF_ATTEMPTS: u32 = 1000;

const UNCHECKED: u8 = 0;
const NOT_FOUND: u8 = u8::MAX;

/// Set from the options this worker runs.
static COUNT_RESPONSES: AtomicBool = AtomicBool::new(false);
/// `UNCHECKED`, `NOT_FOUND`, or 1 + the index in `POOL_AT` proven.
static POOL: AtomicU8 = AtomicU8::new(UNCHECKED);
static FAILED_PROOFS: AtomicU32 = AtomicU32::new(0);
static NGINX: OnceCell<Option<Nginx>> = OnceCell::new();

/// `ngx_pool_cleanup_t`.
#[repr(C)]
struct PoolCleanup {
    handler: Option<unsafe extern "C" fn(*mut c_void)>,
    data: *mut c_void,
    next: *mut PoolCleanup,
}

/// What a cleanup knows of its request, in memory from the request's pool.
#[repr(C)]
struct Routed {
    request: *const c_void,
    series: u32,
}

type PoolCleanupAdd = unsafe extern "C" fn(*mut c_void, usize) -> *mut PoolCleanup;
type ResponseStatus = unsafe extern "C" fn(*const c_void) -> c_int;
type RequestStart = unsafe extern "C" fn(*const c_void) -> f64;
type Now = unsafe extern "C" fn() -> f64;

/// The functions of the running nginx and lua-nginx-module gray calls.
struct Nginx {
    pool_cleanup_add: PoolCleanupAdd,
    response_status: ResponseStatus,
    request_start: RequestStart,
    now: Now,
}

impl Nginx {
    fn find() -> Option<Nginx> {
        // SAFETY: each symbol, when found, is the function of that name with the C signature
        // nginx 1.9+ and lua-nginx-module 0.10+ give it.
        unsafe {
            Some(Nginx {
                pool_cleanup_add: std::mem::transmute::<*mut c_void, PoolCleanupAdd>(symbol(
                    c"ngx_pool_cleanup_add",
                )?),
                response_status: std::mem::transmute::<*mut c_void, ResponseStatus>(symbol(
                    c"ngx_http_lua_ffi_get_resp_status",
                )?),
                request_start: std::mem::transmute::<*mut c_void, RequestStart>(symbol(
                    c"ngx_http_lua_ffi_req_start_time",
                )?),
                now: std::mem::transmute::<*mut c_void, Now>(symbol(c"ngx_http_lua_ffi_now")?),
            })
        }
    }

    fn get() -> Option<&'static Nginx> {
        NGINX
            .get_or_init(|| {
                let found = Nginx::find();
                if found.is_none() {
                    SHARED.log(
                        Level::Err,
                        "this nginx does not export ngx_pool_cleanup_add or lua-nginx-module's FFI functions: responses are not counted".into(),
                    );
                }
                found
            })
            .as_ref()
    }
}

fn symbol(name: &CStr) -> Option<*mut c_void> {
    // SAFETY: a lookup in the process's global symbols by a NUL-terminated name.
    let found = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    (!found.is_null()).then_some(found)
}

/// Whether this worker counts responses because its options say so.
pub fn set_count_responses(on: bool) {
    COUNT_RESPONSES.store(on, Ordering::Relaxed);
}

/// Whether responses are counted: by this worker's options, or because `log()` has run on this
/// nginx.
#[inline]
fn wanted() -> bool {
    COUNT_RESPONSES.load(Ordering::Relaxed) || metrics::responses_counted()
}

/// Request `r`, routed and counted in `series`: its response is counted in `series` too, as
/// nginx frees it, when responses are counted.
///
/// # Safety
/// `r` is the current request, from resty.core's `get_request()`.
#[inline]
pub unsafe fn routed(r: *const c_void, series: u32) {
    if series == 0 || !wanted() {
        return;
    }
    let Some(nginx) = Nginx::get() else {
        return;
    };
    // SAFETY: the current request, as the caller guarantees.
    let Some(pool) = (unsafe { pool_of(r) }) else {
        return;
    };
    // SAFETY: the request's pool, proven; nginx allocates the cleanup and its data from it.
    unsafe {
        let cleanup = (nginx.pool_cleanup_add)(pool, std::mem::size_of::<Routed>());
        if cleanup.is_null() || (*cleanup).data.is_null() {
            return;
        }
        (*cleanup)
            .data
            .cast::<Routed>()
            .write(Routed { request: r, series });
        (*cleanup).handler = Some(request_freed);
    }
}

/// The pool of request `r`, once its place is proven.
///
/// # Safety
/// `r` points to a live `ngx_http_request_t`.
unsafe fn pool_of(r: *const c_void) -> Option<*mut c_void> {
    // SAFETY: both places lie well inside the request struct; they are read as pointers, and
    // none is followed here.
    let at = |offset: usize| unsafe { r.cast::<u8>().add(offset).cast::<*mut c_void>().read() };
    match POOL.load(Ordering::Relaxed) {
        NOT_FOUND => None,
        UNCHECKED => {
            let own_pool = (r as usize).wrapping_sub(POOL_HEADER);
            let mut holding = POOL_AT
                .iter()
                .enumerate()
                .filter(|&(_, &offset)| at(offset) as usize == own_pool);
            if let (Some((proven, &offset)), None) = (holding.next(), holding.next()) {
                POOL.store(proven as u8 + 1, Ordering::Relaxed);
                return Some(at(offset));
            }
            if FAILED_PROOFS.fetch_add(1, Ordering::Relaxed) + 1 >= PROOF_ATTEMPTS {
                POOL.store(NOT_FOUND, Ordering::Relaxed);
                SHARED.log(
                    Level::Err,
                    format!(
                        "this nginx lays out its request differently from the nginx gray was built for: \
                         no request pool found in {PROOF_ATTEMPTS} requests; responses are not counted"
                    ),
                );
            }
            None
        }
        proven => Some(at(POOL_AT[proven as usize - 1])),
    }
}

/// nginx frees a routed request: counts its response.
///
/// # Safety
/// `data` is the [`Routed`] written by [`routed`], in the pool nginx is destroying; the request
/// it names lives in that pool (or its parent's, for a subrequest) until this returns.
unsafe extern "C" fn request_freed(data: *mut c_void) {
    let _ = catch_unwind(|| {
        let Some(nginx) = NGINX.get().and_then(Option::as_ref) else {
            return;
        };
        // SAFETY: as the caller guarantees.
        let routed = unsafe { data.cast::<Routed>().read() };
        // SAFETY: lua-nginx-module's functions on a request that is still whole.
        let (status, seconds) = unsafe {
            (
                (nginx.response_status)(routed.request),
                (nginx.now)() - (nginx.request_start)(routed.request),
            )
        };
        // Negative: lua-nginx-module found no response to speak of (a fake request).
        if let Ok(status) = u32::try_from(status) {
            metrics::count_response(routed.series, status, seconds);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request struct inside its pool's first block, as nginx allocates it, with `pool` at
    /// `pool_at` and another pointer-sized field holding `other`.
    fn request_in_pool(block: &mut [u64; 256], pool_at: usize, other: usize) -> *const c_void {
        let pool = block.as_mut_ptr() as usize;
        let r = pool + POOL_HEADER;
        let words = &mut block[POOL_HEADER / 8..];
        words[pool_at / 8] = pool as u64;
        for &offset in POOL_AT.iter().filter(|&&o| o != pool_at) {
            words[offset / 8] = other as u64;
        }
        r as *const c_void
    }

    // One test: the proof is process-wide state.
    #[test]
    fn the_pool_is_proven_where_a_main_request_holds_its_own_and_only_there() {
        let mut parent = [0u64; 256];
        let mut block = [0u64; 256];
        // A subrequest: its pool is its parent's, so nothing is proven by it.
        let parent_pool = parent.as_mut_ptr() as usize;
        let sub = request_in_pool(&mut block, 88, 0);
        // SAFETY: `sub` points into `block`, large enough for every place read.
        unsafe {
            sub.cast::<u8>()
                .add(88)
                .cast_mut()
                .cast::<usize>()
                .write(parent_pool);
            assert_eq!(pool_of(sub), None);
        }
        assert_eq!(POOL.load(Ordering::Relaxed), UNCHECKED);
        // A main request of an nginx built without the cache: the pool 8 bytes earlier.
        let main = request_in_pool(&mut block, 80, 0x1234);
        // SAFETY: as above.
        let pool = unsafe { pool_of(main) };
        assert_eq!(pool, Some(block.as_mut_ptr().cast()));
        assert_eq!(POOL.load(Ordering::Relaxed), 2);
        // Proven, the place is read for any request, a subrequest's included.
        // SAFETY: as above.
        unsafe {
            sub.cast::<u8>()
                .add(80)
                .cast_mut()
                .cast::<usize>()
                .write(parent_pool);
            assert_eq!(pool_of(sub), Some(parent_pool as *mut c_void));
        }
    }
}
