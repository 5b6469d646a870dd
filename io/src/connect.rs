//! A connect bounded as a whole: name resolution on a helper thread within the deadline, each
//! of a host's addresses tried in the time that is left, and a unix socket's connect retried
//! non-blocking until the deadline (a full backlog would block it for as long as it lasts).

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::connection::Error;

pub(crate) fn resolve(host: &str, port: u16, deadline: Instant) -> Result<Vec<SocketAddr>, Error> {
    resolve_with(host, port, deadline, |name, port| {
        (name.as_str(), port).to_socket_addrs().map(Vec::from_iter)
    })
}

type Lookup = fn(String, u16) -> io::Result<Vec<SocketAddr>>;

/// The addresses of `host`, looked up on a helper thread so the lookup is bounded by `deadline`
/// (getaddrinfo cannot be cancelled; a late answer is dropped with the thread). An IP address is
/// used as it is.
fn resolve_with(
    host: &str,
    port: u16,
    deadline: Instant,
    lookup: Lookup,
) -> Result<Vec<SocketAddr>, Error> {
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let (found, answer) = mpsc::channel();
    let name = host.to_string();
    thread::Builder::new()
        .name("gray-resolve".into())
        .spawn(move || {
            let _ = found.send(lookup(name, port));
        })?;
    let left = deadline.saturating_duration_since(Instant::now());
    match answer.recv_timeout(left) {
        Ok(addrs) => Ok(addrs?),
        Err(_) => Err(Error::Io(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("resolving {host} did not finish in time"),
        ))),
    }
}

/// Tries each address of `host` in turn, all within `deadline`: every attempt gets only the time
/// that is left, so N unreachable addresses cost the timeout once, not N times.
pub(crate) fn connect_tcp<S>(
    host: &str,
    port: u16,
    deadline: Instant,
    resolve: impl FnOnce(&str, u16, Instant) -> Result<Vec<SocketAddr>, Error>,
    connect: impl Fn(&SocketAddr, Duration) -> io::Result<S>,
) -> Result<S, Error> {
    let addrs = resolve(host, port, deadline)?;
    let mut last = None;
    for addr in &addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(last.unwrap_or_else(|| {
                Error::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no time left to connect to {host} after resolving it"),
                ))
            }));
        }
        match connect(addr, left) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(Error::Io(e)),
        }
    }
    Err(last.unwrap_or_else(|| {
        Error::Io(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host} has no address"),
        ))
    }))
}

/// A unix socket's connect, bounded by `deadline`: a server whose backlog is full makes a
/// blocking connect wait for as long as it does not accept, so the connect is made non-blocking
/// and tried again (a unix socket cannot be polled for the end of a connect) until the deadline.
pub(crate) fn connect_unix(path: &Path, deadline: Instant) -> io::Result<UnixStream> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;

    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("unix socket path {} is too long", path.display()),
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (to, from) in addr.sun_path.iter_mut().zip(bytes) {
        *to = *from as libc::c_char;
    }
    // SAFETY: plain arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket just made, owned from here on by the stream (closed with it).
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    loop {
        // SAFETY: `addr` is a sockaddr_un of the size given, alive for the call.
        let connected = unsafe {
            libc::connect(
                fd,
                (&addr as *const libc::sockaddr_un).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            )
        };
        if connected == 0 {
            stream.set_nonblocking(false)?;
            return Ok(stream);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EAGAIN) if Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(5).min(deadline - Instant::now()));
            }
            Some(libc::EAGAIN) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{} accepted no connection in time", path.display()),
                ))
            }
            _ => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn a_slow_lookup_is_cut_at_the_deadline() {
        let started = Instant::now();
        let slow: Lookup = |_, _| {
            thread::sleep(Duration::from_secs(2));
            Ok(vec![])
        };
        let err = resolve_with(
            "slow.invalid",
            6379,
            started + Duration::from_millis(100),
            slow,
        )
        .unwrap_err();
        assert!(err.is_timeout());
        assert_eq!(
            err.to_string(),
            "resolving slow.invalid did not finish in time"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        let literal: Lookup = |_, _| unreachable!("an IP address is not looked up");
        assert_eq!(
            resolve_with("[::1]", 6379, Instant::now(), literal).unwrap(),
            vec!["[::1]:6379".parse().unwrap()]
        );
    }

    #[test]
    fn a_unix_socket_that_accepts_nothing_is_given_the_connect_timeout() {
        use std::os::unix::ffi::OsStrExt;

        let dir = std::env::temp_dir().join(format!("gray-unix-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("full.sock");
        let _ = std::fs::remove_file(&path);
        // A listener with a backlog of 0 that never accepts.
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        // SAFETY: the listener's own socket, listened on again with a smaller backlog.
        assert_eq!(
            unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 0) },
            0
        );
        let mut held = Vec::new();
        let mut timed_out = None;
        for _ in 0..16 {
            let started = Instant::now();
            match connect_unix(&path, started + Duration::from_millis(200)) {
                Ok(stream) => held.push(stream),
                Err(e) => {
                    timed_out = Some((e, started.elapsed()));
                    break;
                }
            }
        }
        let (e, took) = timed_out.expect("the backlog filled up");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(took < Duration::from_secs(1), "{took:?}");
        let too_long = Path::new(std::ffi::OsStr::from_bytes(&[b'x'; 200]));
        assert!(connect_unix(too_long, Instant::now()).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unreachable_addresses_share_one_timeout() {
        let timeout = Duration::from_millis(200);
        let deadline = Instant::now() + timeout;
        let three = |_: &str, port: u16, _: Instant| {
            Ok((1..=3)
                .map(|i| SocketAddr::new(IpAddr::from([127, 0, 0, i]), port))
                .collect())
        };
        let given = RefCell::new(Vec::new());
        let black_hole = |_: &SocketAddr, left: Duration| -> io::Result<()> {
            given.borrow_mut().push(left);
            thread::sleep(left);
            Err(io::ErrorKind::TimedOut.into())
        };
        let started = Instant::now();
        let result = connect_tcp("redis.example", 6379, deadline, three, black_hole);
        assert!(result.unwrap_err().is_timeout());
        assert!(started.elapsed() < timeout + Duration::from_millis(100));
        // The first attempt may use all of it; none is given more than what is left.
        let given = given.into_inner();
        assert!(given[0] <= timeout);
        assert!(given.len() <= 2, "{given:?}");
    }
}
