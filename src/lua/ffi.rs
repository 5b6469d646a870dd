//! The request path's FFI functions, which gray.lua calls through LuaJIT's FFI with no Lua API in
//! between: [`route_request`] (the address read from the request itself) and [`route_with`]
//! (with what it asked for, in one [`RequestInputs`]). Each catches every panic and then answers
//! production; none locks or does I/O, and neither allocates but from the request's own pool
//! (the cleanup that counts its response, [`crate::request_end`]). What a decision sends on
//! besides its target (the lane, a minted id's cookie, the rule's name) is copied into the same
//! struct, and [`carry`] bits tell gray.lua which.
//!
//! [`cdef`] declares for LuaJIT the struct and the two signatures, written here once.

use std::ffi::{c_int, c_void};
use std::panic::catch_unwind;

use gray_core::decision::{code, Carry, Extra, Gathered, Target};
use gray_core::plan::{Fetched, Header};
use gray_core::rules::anonymous::MAX_SET_COOKIE;
use gray_core::rules::lane::{self, MAX_BAGGAGE, MAX_LABEL};
use gray_core::rules::source::MAX_NAME;
use gray_core::rules::MAX_INPUTS;

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

/// What gray.lua sends on after a decision, as bits of `RequestInputs::carry`.
pub(super) mod carry {
    /// Set the lane header (`lane_header`) to `lane`.
    pub const LANE: i32 = 1;
    /// Set `baggage` to `baggage`.
    pub const BAGGAGE: i32 = 2;
    /// Add `Set-Cookie: set_cookie` to the response.
    pub const COOKIE: i32 = 4;
    /// `rule` is the deciding rule's name, for `$gray_rule`.
    pub const RULE: i32 = 8;
}

/// The longest rule name `$gray_rule` holds; a longer one is cut.
const MAX_RULE_NAME: usize = 256;

/// The C declarations gray.lua hands to `ffi.cdef`: [`RequestInputs`] and the functions' types.
/// `ngx_http_lua_ffi_table_elt_t` is resty.core's, declared before.
pub(super) fn cdef() -> String {
    format!(
        r#"
typedef struct {{
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
    int want_rule;
    int carry;
    uint32_t lane_header_len;
    uint32_t lane_len;
    uint32_t baggage_len;
    uint32_t set_cookie_len;
    uint32_t rule_len;
    unsigned char lane_header[{MAX_NAME}];
    unsigned char lane[{MAX_LABEL}];
    unsigned char rule[{MAX_RULE_NAME}];
    char set_cookie[{MAX_SET_COOKIE}];
    unsigned char baggage[{MAX_BAGGAGE}];
}} gray_request_inputs_t;
typedef int (*gray_route_request_t)(void *r, int set, gray_request_inputs_t *io);
typedef int (*gray_route_with_t)(void *r, int set, gray_request_inputs_t *io);
"#
    )
}

/// What gray.lua fetched for a request when `route_request` asked for more: the peer address
/// (`$binary_remote_addr`, or null: read from the request), the forwarding headers of a trusted
/// peer (`forwarded` says they were fetched; each null when absent), and the inputs of plan
/// `plan`: `n` variable values (`values`/`lens`, a null value absent) and `n_headers` request
/// headers. Every pointer points into the request's memory or a Lua string alive for the call.
/// Then what the decision sends on: `carry` says which of the buffers after it hold something
/// (gray.lua clears it before each decision); `want_rule` asks for the rule's name. Lengths are
/// 32-bit, so LuaJIT reads them as plain numbers.
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
    want_rule: c_int,
    carry: c_int,
    lane_header_len: u32,
    lane_len: u32,
    baggage_len: u32,
    set_cookie_len: u32,
    rule_len: u32,
    lane_header: [u8; MAX_NAME],
    lane: [u8; MAX_LABEL],
    rule: [u8; MAX_RULE_NAME],
    set_cookie: [u8; MAX_SET_COOKIE],
    baggage: [u8; MAX_BAGGAGE],
}

impl RequestInputs {
    /// Copies what `carry` holds into the buffers, and says which in `self.carry`. `headers` is
    /// the request's header list, where its `baggage` headers are.
    fn send_on(&mut self, carry: &Carry<'_>, headers: Option<&FfiFetched<'_>>) {
        let mut bits = 0;
        if let Some((lane, label)) = carry.lane {
            self.lane_header_len = copy(lane.header.as_bytes(), &mut self.lane_header);
            self.lane_len = copy(label.as_bytes(), &mut self.lane);
            bits |= carry::LANE;
            if let Some(member) = &lane.baggage {
                let incoming = headers.into_iter().flat_map(|h| {
                    (0..h.header_count())
                        .map(|i| h.header(i))
                        .filter(|(key, _)| key.eq_ignore_ascii_case(b"baggage"))
                        .map(|(_, value)| value)
                });
                self.baggage_len = lane::baggage(incoming, member, label, &mut self.baggage) as u32;
                bits |= carry::BAGGAGE;
            }
        }
        if let Some((anonymous, id)) = &carry.minted {
            self.set_cookie_len = anonymous.set_cookie(id, &mut self.set_cookie) as u32;
            bits |= carry::COOKIE;
        }
        if let (Some(rule), true) = (carry.rule, self.want_rule != 0) {
            self.rule_len = copy(rule.as_bytes(), &mut self.rule);
            bits |= carry::RULE;
        }
        self.carry = bits;
    }
}

/// `from` into `to`, cut to fit; the length copied.
fn copy(from: &[u8], to: &mut [u8]) -> u32 {
    let len = from.len().min(to.len());
    to[..len].copy_from_slice(&from[..len]);
    len as u32
}

/// Whether a decision sends anything on: most rule sets have neither lanes nor anonymous ids, and
/// a configuration without `$gray_rule` wants no rule name.
#[inline]
fn sends_on(carry: &Carry<'_>, io: &RequestInputs) -> bool {
    carry.lane.is_some() || carry.minted.is_some() || (carry.rule.is_some() && io.want_rule != 0)
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
/// is a trusted proxy, or the rule set reads inputs), answered through `route_with`. What the
/// decision sends on goes to `io`.
///
/// # Safety
/// `r` is the current request, from resty.core's `get_request()`, and `io` gray.lua's struct.
pub(super) unsafe extern "C" fn route_request(
    r: *const c_void,
    set: c_int,
    io: *mut RequestInputs,
) -> c_int {
    catch_unwind(|| {
        // SAFETY: gray.lua passes the current request.
        let Some(peer) = (unsafe { ADDRESS.peer(r) }) else {
            return code::NEED_ADDRESS;
        };
        // SAFETY: gray.lua's struct, valid and not aliased for this call.
        let io = unsafe { io.as_mut() };
        let snapshot = SHARED.snapshot.load();
        let mut carry = Carry::default();
        let extra = Extra {
            mint: Some(&minting::mint),
            ..Extra::default()
        };
        let code = snapshot.route(set as usize, peer, &extra, &mut carry);
        if let Some(io) = io {
            if sends_on(&carry, io) {
                io.send_on(&carry, None);
            }
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
    io: *mut RequestInputs,
) -> c_int {
    catch_unwind(|| {
        // SAFETY: gray.lua's struct, valid and not aliased for this call.
        let Some(inputs) = (unsafe { io.as_mut() }) else {
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
        if sends_on(&carry, inputs) {
            inputs.send_on(&carry, Some(&fetched));
        }
        counted(r, code)
    })
    .unwrap_or(Target::Prod as c_int)
}
