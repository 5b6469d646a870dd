//! The client's address read straight from nginx's request, where `$binary_remote_addr` reads it
//! (`r->connection->sockaddr`), without nginx's variable lookup: lowercasing and hashing the name
//! on every call is ~900 instructions, most of what routing a request costs.
//!
//! nginx's structs are not an ABI, so the two offsets below (those of every nginx since 1.9.13 on
//! 64-bit Linux) are trusted only once they are proven for this nginx: the pointer that
//! `$binary_remote_addr` returns for a request must be the one found at them. Until a worker has
//! checked, or if the check fails, the address comes through the variable. The check compares
//! pointers and follows none it has not proven, except `r->connection`: the first field after the
//! request's `uint32_t signature`, at offset 8 in every nginx since the field exists (the check
//! reads it to find the connection). realip changes `r->connection->sockaddr` itself, so both
//! ways always read the same address; that includes the PROXY protocol's client only when realip
//! takes it (`real_ip_header proxy_protocol`): with `listen ... proxy_protocol` alone, the
//! connection's address, and so gray's client, is the load balancer's.

use std::ffi::c_void;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::refresher::FAULT_ENV;

/// `ngx_connection_t *connection` in `ngx_http_request_t`, after `uint32_t signature`.
const REQUEST_CONNECTION: usize = 8;
/// `struct sockaddr *sockaddr` in `ngx_connection_t`, after ten pointers (`data`, `read`,
/// `write`, `recv`, `send`, `recv_chain`, `send_chain`, `listening`, `log`, `pool`), the `fd`,
/// the `off_t sent` and the `int type` added in 1.9.13.
const CONNECTION_SOCKADDR: usize = 104;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// Where the address starts in `sockaddr_in` and `sockaddr_in6`: what `$binary_remote_addr` points at.
const SIN_ADDR: usize = 4;
const SIN6_ADDR: usize = 8;

const UNCHECKED: u8 = 0;
const PROVEN: u8 = 1;
const DIFFERENT: u8 = 2;

/// How a worker reads the client address, as `status()` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressRead {
    /// No request with an IP peer has been checked yet: the variable is used.
    Unchecked,
    /// Straight from the request: the offsets were proven for this nginx.
    Connection,
    /// Through `$binary_remote_addr`: this nginx's layout is not the one gray knows.
    Variable,
}

impl AddressRead {
    pub fn as_str(self) -> &'static str {
        match self {
            AddressRead::Unchecked => "unchecked",
            AddressRead::Connection => "connection",
            AddressRead::Variable => "variable",
        }
    }
}

/// One per process: every request of a worker is served by the same nginx binary.
#[derive(Default)]
pub struct AddressReader {
    state: AtomicU8,
}

impl AddressReader {
    pub const fn new() -> Self {
        AddressReader {
            state: AtomicU8::new(UNCHECKED),
        }
    }

    pub fn mode(&self) -> AddressRead {
        match self.state.load(Ordering::Relaxed) {
            PROVEN => AddressRead::Connection,
            DIFFERENT => AddressRead::Variable,
            _ => AddressRead::Unchecked,
        }
    }

    /// The peer's address (4 or 16 bytes, as `$binary_remote_addr`), or `None` when it has to be
    /// read through the variable: offsets not proven, or not an IP peer (a unix socket).
    ///
    /// # Safety
    /// `r` is the `ngx_http_request_t *` of a request in progress; the slice lives as long as it.
    #[inline]
    pub unsafe fn peer<'r>(&self, r: *const c_void) -> Option<&'r [u8]> {
        if self.state.load(Ordering::Relaxed) != PROVEN {
            return None;
        }
        // SAFETY: the offsets are proven for this nginx, so `sockaddr` is the connection's
        // address, whose family says how long it is.
        unsafe {
            let sockaddr = sockaddr(r);
            if sockaddr.is_null() {
                return None;
            }
            let (offset, len) = match sockaddr.cast::<u16>().read() {
                AF_INET => (SIN_ADDR, 4),
                AF_INET6 => (SIN6_ADDR, 16),
                _ => return None,
            };
            Some(std::slice::from_raw_parts(sockaddr.add(offset), len))
        }
    }

    /// Checks the offsets against what `$binary_remote_addr` gave for the same request (`value`,
    /// `len`), once per process. Returns `Some(proven)` when this call decided, `None` when it had
    /// nothing to compare (already decided, or not an IP peer).
    ///
    /// # Safety
    /// `r` is the `ngx_http_request_t *` of a request in progress.
    pub unsafe fn check(&self, r: *const c_void, value: *const u8, len: usize) -> Option<bool> {
        if self.state.load(Ordering::Relaxed) != UNCHECKED {
            return None;
        }
        let offset = match len {
            4 => SIN_ADDR,
            16 => SIN6_ADDR,
            _ => return None,
        };
        let proven = cfg!(all(target_os = "linux", target_pointer_width = "64"))
            && std::env::var_os(FAULT_ENV).is_none_or(|f| f != "address-layout")
            // SAFETY: on 64-bit Linux both structs reach past the offsets read; only the pointer
            // values are compared, nothing unproven is followed.
            && unsafe { sockaddr(r) } as usize + offset == value as usize;
        let state = if proven { PROVEN } else { DIFFERENT };
        self.state.store(state, Ordering::Relaxed);
        Some(proven)
    }
}

/// `r->connection->sockaddr`, by the offsets above.
///
/// # Safety
/// `r` is a live `ngx_http_request_t *`, on a 64-bit target, so both reads stay inside the
/// structs. The first read (`r->connection`, offset 8) is sound before any proof: that field has
/// never moved. The second is only an address until the caller has proven the offset.
unsafe fn sockaddr(r: *const c_void) -> *const u8 {
    // SAFETY: per the function's contract.
    unsafe {
        let connection = r
            .cast::<u8>()
            .add(REQUEST_CONNECTION)
            .cast::<*const u8>()
            .read();
        connection
            .add(CONNECTION_SOCKADDR)
            .cast::<*const u8>()
            .read()
    }
}

#[cfg(all(test, target_os = "linux", target_pointer_width = "64"))]
mod tests {
    use super::*;

    /// The first words of nginx's structs, laid out as on 64-bit Linux.
    struct FakeRequest {
        sockaddr: Box<[u8; 28]>,
        /// Only pointed at, through `request`.
        _connection: Box<[usize; 16]>,
        request: Box<[usize; 4]>,
    }

    impl FakeRequest {
        fn new(family: u16, addr: &[u8]) -> Self {
            let mut sockaddr = Box::new([0u8; 28]);
            sockaddr[..2].copy_from_slice(&family.to_ne_bytes());
            let offset = if family == AF_INET6 {
                SIN6_ADDR
            } else {
                SIN_ADDR
            };
            sockaddr[offset..offset + addr.len()].copy_from_slice(addr);
            let mut connection = Box::new([0usize; 16]);
            connection[CONNECTION_SOCKADDR / 8] = sockaddr.as_ptr() as usize;
            let mut request = Box::new([0usize; 4]);
            request[REQUEST_CONNECTION / 8] = connection.as_ptr() as usize;
            FakeRequest {
                sockaddr,
                _connection: connection,
                request,
            }
        }

        fn r(&self) -> *const c_void {
            self.request.as_ptr().cast()
        }

        /// What `$binary_remote_addr` returns: a pointer into the sockaddr.
        fn variable(&self, len: usize) -> *const u8 {
            let offset = if len == 16 { SIN6_ADDR } else { SIN_ADDR };
            self.sockaddr[offset..].as_ptr()
        }
    }

    #[test]
    fn reads_the_variable_until_the_layout_is_proven() {
        let reader = AddressReader::new();
        let v4 = FakeRequest::new(AF_INET, &[127, 0, 0, 10]);
        assert_eq!(unsafe { reader.peer(v4.r()) }, None);
        assert_eq!(reader.mode(), AddressRead::Unchecked);
        assert_eq!(
            unsafe { reader.check(v4.r(), v4.variable(4), 4) },
            Some(true)
        );
        assert_eq!(reader.mode(), AddressRead::Connection);
        assert_eq!(unsafe { reader.peer(v4.r()) }, Some(&[127, 0, 0, 10][..]));
        // Decided once per process.
        assert_eq!(unsafe { reader.check(v4.r(), v4.variable(4), 4) }, None);

        let v6_addr: [u8; 16] = std::net::Ipv6Addr::LOCALHOST.octets();
        let v6 = FakeRequest::new(AF_INET6, &v6_addr);
        assert_eq!(unsafe { reader.peer(v6.r()) }, Some(&v6_addr[..]));
    }

    #[test]
    fn a_different_layout_keeps_the_variable() {
        let reader = AddressReader::new();
        let request = FakeRequest::new(AF_INET, &[127, 0, 0, 1]);
        let elsewhere = [127u8, 0, 0, 1];
        assert_eq!(
            unsafe { reader.check(request.r(), elsewhere.as_ptr(), 4) },
            Some(false)
        );
        assert_eq!(reader.mode(), AddressRead::Variable);
        assert_eq!(unsafe { reader.peer(request.r()) }, None);
        assert_eq!(
            unsafe { reader.check(request.r(), request.variable(4), 4) },
            None
        );
    }

    #[test]
    fn a_unix_socket_peer_proves_nothing_and_is_read_through_the_variable() {
        let reader = AddressReader::new();
        const AF_UNIX: u16 = 1;
        let unix = FakeRequest::new(AF_UNIX, b"");
        assert_eq!(
            unsafe { reader.check(unix.r(), b"unix:".as_ptr(), 5) },
            None
        );
        assert_eq!(reader.mode(), AddressRead::Unchecked);

        let v4 = FakeRequest::new(AF_INET, &[127, 0, 0, 1]);
        unsafe { reader.check(v4.r(), v4.variable(4), 4) };
        assert_eq!(unsafe { reader.peer(unix.r()) }, None);
    }
}
