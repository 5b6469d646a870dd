//! What a decision sends on besides its target, set on the request straight from the request
//! path: the lane header (and baggage) that `proxy_pass` forwards, a minted id's `Set-Cookie`, and
//! `$gray_target` / `$gray_rule`. Each goes through the lua-nginx-module FFI function behind
//! `ngx.req.set_header`, `ngx.header` or `ngx.var` (each copies what it is given into the
//! request's pool), found once per process by name, as LuaJIT's `ffi.C` finds them: calling them
//! from Rust spares gray.lua a round of cdata reads and calls, most of what the feature would cost
//! in Lua. An internal redirect keeps all three (request headers, response headers set so far,
//! variables), so they reach the named location `ngx.exec` jumps to.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use gray_core::decision::Carry;
use gray_core::plan::Fetched;
use gray_core::rules::anonymous::MAX_SET_COOKIE;
use gray_core::rules::lane::{self, MAX_BAGGAGE};

use crate::log::Level;
use crate::state::SHARED;

type SetRequestHeader = unsafe extern "C" fn(
    r: *const c_void,
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
    mvals: *const c_void,
    mvals_len: usize,
    override_: c_int,
    errmsg: *mut *const c_char,
) -> c_int;

type SetResponseHeader = unsafe extern "C" fn(
    r: *const c_void,
    key: *const u8,
    key_len: usize,
    is_nil: c_int,
    value: *const u8,
    value_len: usize,
    mvals: *const c_void,
    mvals_len: usize,
    override_: c_int,
    errmsg: *mut *const c_char,
) -> c_int;

type SetVariable = unsafe extern "C" fn(
    r: *const c_void,
    name: *const u8,
    name_len: usize,
    lowcase: *mut u8,
    value: *const u8,
    value_len: usize,
    errbuf: *mut u8,
    errlen: *mut usize,
) -> c_int;

/// lua-nginx-module's functions, as this nginx has them.
struct Nginx {
    set_request_header: SetRequestHeader,
    set_response_header: SetResponseHeader,
    set_variable: SetVariable,
}

static NGINX: OnceLock<Option<Nginx>> = OnceLock::new();

const NGX_OK: c_int = 0;
const TARGET_VARIABLE: &str = "gray_target";
const RULE_VARIABLE: &str = "gray_rule";

/// Which of the variables this configuration declares, learned on a worker's first routed
/// request (a `set` anywhere declares a variable for every server).
static VARIABLES: AtomicU8 = AtomicU8::new(UNCHECKED);
const UNCHECKED: u8 = 0;
const CHECKED: u8 = 1;
const HAS_TARGET: u8 = 2;
const HAS_RULE: u8 = 4;

/// Finds lua-nginx-module's functions; called once as the module loads (in the master, whose
/// workers inherit the answer). `None` (and a log line at the first use) if one is missing.
pub(super) fn resolve() {
    NGINX.get_or_init(|| {
        // SAFETY: dlsym with the default handle reads the process's symbol tables; each name
        // is a lua-nginx-module function of the signature declared above (resty.core declares
        // the same for LuaJIT, on every version gray supports).
        unsafe {
            let find = |name: &CStr| libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr());
            let (request, response, variable) = (
                find(c"ngx_http_lua_ffi_req_set_header"),
                find(c"ngx_http_lua_ffi_set_resp_header"),
                find(c"ngx_http_lua_ffi_var_set"),
            );
            if request.is_null() || response.is_null() || variable.is_null() {
                return None;
            }
            Some(Nginx {
                set_request_header: std::mem::transmute::<*mut c_void, SetRequestHeader>(request),
                set_response_header: std::mem::transmute::<*mut c_void, SetResponseHeader>(
                    response,
                ),
                set_variable: std::mem::transmute::<*mut c_void, SetVariable>(variable),
            })
        }
    });
}

/// Whether a decision has anything to send on: most rule sets have neither lanes nor anonymous
/// ids, and most configurations declare no variables. One load and a test when there is not.
#[inline]
pub(super) fn wanted(carry: &Carry<'_>) -> bool {
    carry.lane.is_some() || carry.minted.is_some() || VARIABLES.load(Ordering::Relaxed) != CHECKED
}

/// Sets on request `r` what `carry` holds, and the variables where declared; `target` is the
/// decision's location and `headers` the request's header list, where its `baggage` headers are.
///
/// # Safety
/// `r` is the current request, in the content phase, from gray.lua.
pub(super) unsafe fn send_on(
    r: *const c_void,
    carry: &Carry<'_>,
    target: &str,
    headers: Option<&dyn Fetched<'_>>,
) {
    let Some(nginx) = NGINX.get().and_then(Option::as_ref) else {
        once_per_process(&MISSING, || {
            "this nginx's lua-nginx-module lacks the FFI functions behind ngx.req.set_header, \
             ngx.header and ngx.var: no lane header, minted id or $gray_ variable is set"
                .into()
        });
        return;
    };
    // SAFETY: the current request, per this function's contract.
    unsafe {
        if let Some((lane, label)) = carry.lane {
            nginx.request_header(
                r,
                lane.header.as_bytes(),
                label.as_bytes(),
                !carry.lane_header_absent,
            );
            if let Some(member) = &lane.baggage {
                let mut out = [0u8; MAX_BAGGAGE];
                let incoming = headers.into_iter().flat_map(|h| {
                    (0..h.header_count())
                        .map(|i| h.header(i))
                        .filter(|(key, _)| *key == b"baggage")
                        .map(|(_, value)| value)
                });
                let len = lane::baggage(incoming, member, label, &mut out);
                nginx.request_header(r, b"baggage", &out[..len], true);
            }
        }
        if let Some((anonymous, id)) = &carry.minted {
            let mut out = [0u8; MAX_SET_COOKIE];
            let len = anonymous.set_cookie(id, &mut out);
            nginx.set_cookie(r, &out[..len]);
        }
        let mut declared = VARIABLES.load(Ordering::Relaxed);
        if declared == UNCHECKED {
            declared = CHECKED
                | if nginx.variable(r, TARGET_VARIABLE, b"") {
                    HAS_TARGET
                } else {
                    0
                }
                | if nginx.variable(r, RULE_VARIABLE, b"") {
                    HAS_RULE
                } else {
                    0
                };
            VARIABLES.store(declared, Ordering::Relaxed);
        }
        if declared & HAS_TARGET != 0 {
            nginx.variable(r, TARGET_VARIABLE, target.as_bytes());
        }
        if let (true, Some(rule)) = (declared & HAS_RULE != 0, carry.rule) {
            nginx.variable(r, RULE_VARIABLE, rule.as_bytes());
        }
    }
}

static MISSING: AtomicU8 = AtomicU8::new(0);
static HEADER_FAILED: AtomicU8 = AtomicU8::new(0);
static COOKIE_FAILED: AtomicU8 = AtomicU8::new(0);

/// Logs `line()` the first time this process gets here through `flag`.
fn once_per_process(flag: &AtomicU8, line: impl FnOnce() -> String) {
    if flag.swap(1, Ordering::Relaxed) == 0 {
        SHARED.log(Level::Err, line());
    }
}

/// Logs, once per process through `flag`, a call of lua-nginx-module's that did not return
/// `NGX_OK`: `what` it could not do, and why.
///
/// # Safety
/// `errmsg` is what the call left in its out argument: null or a NUL-terminated message.
unsafe fn check(rc: c_int, errmsg: *const c_char, flag: &AtomicU8, what: impl FnOnce() -> String) {
    if rc == NGX_OK {
        return;
    }
    let why = if errmsg.is_null() {
        "no message".into()
    } else {
        // SAFETY: per this function's contract.
        unsafe { CStr::from_ptr(errmsg) }.to_string_lossy()
    };
    once_per_process(flag, || format!("could not {} ({why}, code {rc})", what()));
}

impl Nginx {
    /// Replaces every copy of request header `name` with one of `value` (`replace`), or adds it.
    unsafe fn request_header(&self, r: *const c_void, name: &[u8], value: &[u8], replace: bool) {
        let mut errmsg = std::ptr::null();
        // SAFETY: the current request; lua-nginx-module copies both into its pool.
        let rc = unsafe {
            (self.set_request_header)(
                r,
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
                std::ptr::null(),
                0,
                c_int::from(replace),
                &mut errmsg,
            )
        };
        // SAFETY: set by lua-nginx-module, or still null.
        unsafe {
            check(rc, errmsg, &HEADER_FAILED, || {
                format!("set the request header {}", String::from_utf8_lossy(name))
            })
        };
    }

    /// Adds `Set-Cookie: value` to the response, beside any other.
    unsafe fn set_cookie(&self, r: *const c_void, value: &[u8]) {
        const NAME: &[u8] = b"Set-Cookie";
        let mut errmsg = std::ptr::null();
        // SAFETY: the current request; lua-nginx-module copies both into its pool.
        let rc = unsafe {
            (self.set_response_header)(
                r,
                NAME.as_ptr(),
                NAME.len(),
                0,
                value.as_ptr(),
                value.len(),
                std::ptr::null(),
                0,
                0,
                &mut errmsg,
            )
        };
        // SAFETY: set by lua-nginx-module, or still null.
        unsafe {
            check(rc, errmsg, &COOKIE_FAILED, || {
                "add the anonymous id's Set-Cookie".into()
            })
        };
    }

    /// Sets variable `name`; false when the configuration does not declare it.
    unsafe fn variable(&self, r: *const c_void, name: &str, value: &[u8]) -> bool {
        let mut lowcase = [0u8; 16];
        let mut errbuf = [0u8; 128];
        let mut errlen = errbuf.len();
        // SAFETY: the current request; `lowcase` holds the name, `errbuf` `errlen` bytes, and
        // lua-nginx-module copies the value into the request's pool.
        unsafe {
            (self.set_variable)(
                r,
                name.as_ptr(),
                name.len(),
                lowcase.as_mut_ptr(),
                value.as_ptr(),
                value.len(),
                errbuf.as_mut_ptr(),
                &mut errlen,
            ) == NGX_OK
        }
    }
}
