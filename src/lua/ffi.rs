//! The request path's FFI functions, which gray.lua calls through LuaJIT's FFI with no Lua API in
//! between: [`route_request`] (the address read from the request itself) and [`route_with`]
//! (with what it asked for, in one [`RequestInputs`]). Each catches every panic and then answers
//! production; none locks or does I/O, and neither allocates but from the request's own pool
//! (the cleanup that counts its response, [`crate::request_end`]). What a decision sends on besides
//! its target (a lane, a minted id, the variables) [`send_on`] sets on the request.
//!
//! [`CDEF`] declares for LuaJIT the struct and the two signatures, written here once.

use std::ffi::{c_int, c_void};
use std::panic::catch_unwind;

use gray_core::decision::{code, Carry, Extra, Gathered, Target};
use gray_core::plan::{Fetched, Header};
use gray_core::rules::MAX_INPUTS;

use super::send_on::{self, send_on};
use crate::log::Level;
use crate::metrics;
use crate::minting;
use crate::nginx_request::AddressReader;
use crate::request_end;
use crate::state::SHARED;

/// How this process reads a request's client address: proven on its first IP peer.
pub(super) static ADDRESS: AddressReader = AddressReader::new();

/// The most request headers the request path looks at for a rule set.
pub(super) const MAX_HEADERS: usize = 100;

/// The C declarations gray.lua hands to `ffi.cdef`: [`RequestInputs`] and the functions' types.
/// `ngx_http_lua_ffi_table_elt_t` is resty.core's, declared before.
pub(super) const CDEF: &str = r#"
typedef struct {
    const char *peer;
    size_t peer_len;
    int forwarded;
    const char *forwarded_for;
    size_t forwarded_for_len;
    const char *real_ip;
    size_t real_ip_len;
    uint32_t plan;
    const char **values;
    size_t *lens;
    size_t n;
    const ngx_http_lua_ffi_table_elt_t *headers;
    int n_headers;
} gray_request_inputs_t;
typedef int (*gray_route_request_t)(void *r, int set);
typedef int (*gray_route_with_t)(void *r, int set, const gray_request_inputs_t *inputs);
"#;

/// What gray.lua fetched for a request when `route_request` asked for more: the peer address
/// (`$binary_remote_addr`, or null: read from the request), the forwarding headers of a trusted
/// peer (`forwarded` says they were fetched; each null when absent), and the inputs of plan
/// `plan`: `n` variable values (`values`/`lens`, a null value absent) and `n_headers` request
/// headers. Every pointer points into the request's memory or a Lua string alive for the call.
#[repr(C)]
pub struct RequestInputs {
    peer: *const u8,
    peer_len: usize,
    forwarded: c_int,
    forwarded_for: *const u8,
    forwarded_for_len: usize,
    real_ip: *const u8,
    real_ip_len: usize,
    plan: u32,
    values: *const *const u8,
    lens: *const usize,
    n: usize,
    headers: *const FfiHeader,
    n_headers: c_int,
}

/// # Safety
/// `ptr` must point to `len` readable bytes, or be null with `len` 0 (LuaJIT passes a Lua string
/// or nil).
pub(super) unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> Option<&'a [u8]> {
    if ptr.is_null() {
        None
    } else {
        // SAFETY: the caller guarantees `ptr` is valid for `len` bytes for this call.
        Some(unsafe { std::slice::from_raw_parts(ptr, len) })
    }
}

/// FFI: the decision for request `r` by rule set `set`, its address read from the request
/// itself; or a `code::NEED_*` (the address has to come through `$binary_remote_addr`, the peer
/// is a trusted proxy, or the rule set reads inputs), answered through `route_with`.
///
/// # Safety
/// `r` is the current request, from resty.core's `get_request()`.
pub(super) unsafe extern "C" fn route_request(r: *const c_void, set: c_int) -> c_int {
    catch_unwind(|| {
        // SAFETY: gray.lua passes the current request.
        let Some(peer) = (unsafe { ADDRESS.peer(r) }) else {
            return code::NEED_ADDRESS;
        };
        let snapshot = SHARED.snapshot.load();
        let mut carry = Carry::default();
        let code = snapshot.route(set as usize, peer, &Extra::default(), &mut carry);
        if code >= 0 && send_on::wanted(&carry) {
            let target = snapshot.target_name((code & code::TARGET_MASK) as usize);
            // SAFETY: the current request, in route()'s content phase.
            unsafe { send_on(r, &carry, target, None) };
        }
        counted(r, code)
    })
    .unwrap_or(Target::Prod as c_int)
}

/// Counts request `r`'s decision in its series, and its response when nginx frees it; the
/// target for gray.lua, or the code as it is when more input is needed.
#[inline]
fn counted(r: *const c_void, code: c_int) -> c_int {
    if code < 0 {
        return code;
    }
    let series = code::series(code);
    metrics::count(series, metrics::counter::REQUESTS, 1);
    // SAFETY: every caller has `r` from gray.lua, the current request.
    unsafe { request_end::routed(r, series) };
    code & code::TARGET_MASK
}

/// A string as lua-nginx-module's FFI hands it over (`ngx_http_lua_ffi_str_t`).
#[repr(C)]
struct FfiStr {
    len: c_int,
    data: *const u8,
}

/// A request header as `ngx_http_lua_ffi_req_get_headers` lists it (`ngx_http_lua_ffi_table_elt_t`).
#[repr(C)]
pub struct FfiHeader {
    key: FfiStr,
    value: FfiStr,
}

/// gray.lua's arrays for one request: `values` variable values and `headers` request headers,
/// each pointing into the request's memory (valid while it lasts, so for `'r`).
struct FfiFetched<'r> {
    values: usize,
    value_ptrs: *const *const u8,
    value_lens: *const usize,
    headers: usize,
    header_ptr: *const FfiHeader,
    _request: std::marker::PhantomData<&'r [u8]>,
}

impl<'r> Fetched<'r> for FfiFetched<'r> {
    fn header_count(&self) -> usize {
        self.headers
    }

    /// gray.lua reads at most `MAX_HEADERS` of them, and none when nginx will not list them.
    fn every_header(&self) -> bool {
        (1..MAX_HEADERS).contains(&self.headers)
    }

    fn header(&self, index: usize) -> Header<'r> {
        if index >= self.headers {
            return (&[], &[]);
        }
        // SAFETY: gray.lua's array holds `headers` entries that nginx filled, pointing at the
        // request's header memory.
        unsafe {
            let h = &*self.header_ptr.add(index);
            (
                bytes(h.key.data, h.key.len.max(0) as usize).unwrap_or_default(),
                bytes(h.value.data, h.value.len.max(0) as usize).unwrap_or_default(),
            )
        }
    }

    fn variable(&self, index: usize) -> Option<&'r [u8]> {
        if index >= self.values {
            return None;
        }
        // SAFETY: gray.lua's arrays hold `values` entries, each an nginx variable's bytes (or
        // null when absent).
        unsafe { bytes(*self.value_ptrs.add(index), *self.value_lens.add(index)) }
    }
}

/// FFI: the decision with what `route_request` asked for ([`RequestInputs`]). The first IP peer
/// also proves (or not) the address offsets.
///
/// # Safety
/// `r` is the current request and `inputs` points to a [`RequestInputs`] whose pointers are
/// valid for this call (gray.lua's preallocated struct and arrays).
pub(super) unsafe extern "C" fn route_with(
    r: *const c_void,
    set: c_int,
    inputs: *const RequestInputs,
) -> c_int {
    catch_unwind(|| {
        // SAFETY: gray.lua's struct, valid for this call.
        let Some(inputs) = (unsafe { inputs.as_ref() }) else {
            return Target::Prod as c_int;
        };
        let peer = if inputs.peer.is_null() {
            // SAFETY: the current request, from gray.lua.
            match unsafe { ADDRESS.peer(r) } {
                Some(peer) => peer,
                // gray.lua fetched the inputs first and asks again with the address.
                None => return code::NEED_ADDRESS,
            }
        } else {
            // SAFETY: the current request and the variable's value, valid for this call.
            if unsafe { ADDRESS.check(r, inputs.peer, inputs.peer_len) } == Some(false) {
                SHARED.log(
                    Level::Notice,
                    "this nginx lays out its request differently from the nginx gray was built for; \
                     the client address is read through $binary_remote_addr (~900 instructions more per request)"
                        .into(),
                );
            }
            // SAFETY: as above.
            unsafe { bytes(inputs.peer, inputs.peer_len) }.unwrap_or_default()
        };
        // SAFETY: Lua strings (or nil) and their lengths, valid for this call.
        let forwarding = unsafe {
            (
                bytes(inputs.forwarded_for, inputs.forwarded_for_len),
                bytes(inputs.real_ip, inputs.real_ip_len),
            )
        };
        let fetched = FfiFetched {
            values: if inputs.values.is_null() || inputs.lens.is_null() {
                0
            } else {
                inputs.n.min(MAX_INPUTS)
            },
            value_ptrs: inputs.values,
            value_lens: inputs.lens,
            headers: if inputs.headers.is_null() {
                0
            } else {
                usize::try_from(inputs.n_headers)
                    .unwrap_or(0)
                    .min(MAX_HEADERS)
            },
            header_ptr: inputs.headers,
            _request: std::marker::PhantomData,
        };
        let extra = Extra {
            forwarded: (inputs.forwarded != 0).then_some(forwarding),
            inputs: (inputs.plan != 0).then_some(Gathered {
                plan: inputs.plan,
                fetched: &fetched,
            }),
            mint: Some(&minting::mint),
        };
        let snapshot = SHARED.snapshot.load();
        let mut carry = Carry::default();
        let code = snapshot.route(set as usize, peer, &extra, &mut carry);
        if code >= 0 && send_on::wanted(&carry) {
            let target = snapshot.target_name((code & code::TARGET_MASK) as usize);
            // SAFETY: the current request, in route()'s content phase.
            unsafe { send_on(r, &carry, target, Some(&fetched)) };
        }
        counted(r, code)
    })
    .unwrap_or(Target::Prod as c_int)
}
