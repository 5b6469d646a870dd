//! gray's Redis connections: RESP2 over TCP (plain or TLS, [`crate::tls`]) or a unix socket,
//! written here rather than taken from redis-rs (which gray uses for parsing the URL and encoding
//! commands) because of two things it cannot do: read a reply under a byte bound (a bulk string's
//! length is checked before its bytes are read, so a 200 MB member costs nothing but its header),
//! and bound a connect as a whole, name resolution included. Every read and write has a timeout; a connection whose reply was
//! abandoned half-read is out of step and is dropped by its owner ([`Connection::in_step`]).

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use redis::{ConnectionAddr, ConnectionInfo};

use crate::connect::{connect_tcp, connect_unix, resolve};
use crate::tls::{self, Tls};

/// The longest status, error or length line accepted: far beyond any Redis sends.
const MAX_LINE: u64 = 64 * 1024;
/// Read buffer: a SSCAN batch of short members arrives in a few reads.
const READ_BUFFER: usize = 64 * 1024;
/// The deepest a reply may nest: gray's nest two levels (a Sentinel's replicas, an invalidation
/// message). Deeper is a server that is not Redis, which must not walk gray off its stack.
const MAX_DEPTH: usize = 8;
/// The most elements one reply (all its arrays together) or one SSCAN batch may hold: far more
/// than any reply gray asks for (a batch is ~10,000 members), far fewer than a server that never
/// ends its array would send.
const MAX_ELEMENTS: usize = 1 << 20;

/// A reply. Error replies are [`Error::Server`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

#[derive(Debug)]
pub enum Error {
    /// The socket failed, or resolving, connecting, a read or a write timed out.
    Io(io::Error),
    /// Redis answered with an error reply.
    Server(String),
    /// A bulk string longer than the caller allows; its bytes were not read.
    TooLong(usize),
    /// Not the reply that was asked for.
    Protocol(String),
}

impl Reply {
    /// A hash's fields and values, as HGETALL lists them; an item that is not text is left out.
    pub fn hash_pairs(items: &[Reply]) -> impl Iterator<Item = (&[u8], &[u8])> {
        items.chunks(2).filter_map(|pair| match pair {
            [Reply::Bulk(Some(field)), Reply::Bulk(Some(value))] => {
                Some((field.as_slice(), value.as_slice()))
            }
            _ => None,
        })
    }
}

impl Error {
    pub fn is_timeout(&self) -> bool {
        match self {
            Error::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ),
            _ => false,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "{e}"),
            Error::Server(message) => f.write_str(message),
            Error::TooLong(len) => write!(f, "a reply of {len} bytes, over the bound"),
            Error::Protocol(message) => write!(f, "unexpected reply: {message}"),
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

enum Stream {
    Tcp(TcpStream),
    Tls(Box<tls::Stream>),
    Unix(UnixStream),
}

impl Stream {
    fn set_timeouts(&mut self, timeout: Duration) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                s.set_nodelay(true)
            }
            Stream::Tls(s) => {
                s.sock.set_read_timeout(timeout);
                s.sock.set_write_timeout(timeout);
                s.sock.set_nodelay()
            }
            Stream::Unix(s) => {
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))
            }
        }
    }

    /// The socket's own descriptor where bytes on it are bytes of replies; `None` under TLS,
    /// whose decrypted bytes may wait in rustls with nothing left on the socket.
    fn plain_fd(&self) -> Option<RawFd> {
        match self {
            Stream::Tcp(s) => Some(s.as_raw_fd()),
            Stream::Tls(_) => None,
            Stream::Unix(s) => Some(s.as_raw_fd()),
        }
    }

    fn set_read_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(Some(timeout)),
            Stream::Tls(s) => {
                s.sock.set_read_timeout(timeout);
                Ok(())
            }
            Stream::Unix(s) => s.set_read_timeout(Some(timeout)),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Tls(s) => {
                s.sock.start_read();
                s.read(buf).map_err(tls::name_error)
            }
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Tls(s) => {
                s.sock.start_write();
                s.write(buf).map_err(tls::name_error)
            }
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Tls(s) => {
                s.sock.start_write();
                s.flush().map_err(tls::name_error)
            }
            Stream::Unix(s) => s.flush(),
        }
    }
}

pub struct Connection {
    stream: BufReader<Stream>,
    timeout: Duration,
    in_step: bool,
    /// Reused by the reads done once per SET member: its length line and its bytes.
    line: Vec<u8>,
    scratch: Vec<u8>,
}

impl Connection {
    /// Connects, authenticates and selects the database of `info`, over TLS when `tls` is given
    /// (a TCP address only); resolution, connect and handshake bounded together by `timeout`,
    /// each later read and write by `timeout` too.
    pub fn open(
        info: &ConnectionInfo,
        tls: Option<&Tls>,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let deadline = Instant::now() + timeout;
        let mut stream = match (info.addr(), tls) {
            (ConnectionAddr::Tcp(host, port), tls) => {
                let tcp = connect_tcp(host, *port, deadline, resolve, TcpStream::connect_timeout)?;
                match tls {
                    Some(tls) => Stream::Tls(Box::new(tls.handshake(host, tcp, deadline)?)),
                    None => Stream::Tcp(tcp),
                }
            }
            (ConnectionAddr::Unix(path), None) => Stream::Unix(connect_unix(path, deadline)?),
            _ => {
                return Err(Error::Io(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "TLS is for a host and port, not a unix socket",
                )))
            }
        };
        stream.set_timeouts(timeout)?;
        let mut con = Connection {
            stream: BufReader::with_capacity(READ_BUFFER, stream),
            timeout,
            in_step: true,
            line: Vec::new(),
            scratch: Vec::new(),
        };
        let settings = info.redis_settings();
        if let Some(password) = settings.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = settings.username() {
                auth.arg(user);
            }
            con.query(auth.arg(password), 0)?;
        } else if tls.is_some() {
            // Under TLS 1.3 the server judges the client's certificate after the client's side
            // of the handshake is over: one reply tells here, not at the caller's first command.
            con.query(&redis::cmd("PING"), 0)?;
        }
        if settings.db() != 0 {
            con.query(redis::cmd("SELECT").arg(settings.db()), 0)?;
        }
        Ok(con)
    }

    /// False once a reply was abandoned half-read: what follows on the wire is not the next reply.
    pub fn in_step(&self) -> bool {
        self.in_step
    }

    /// Leaves a reply unread (a pipelined one the caller gave up on): out of step from now on.
    pub fn abandon(&mut self) {
        self.in_step = false;
    }

    /// A connection over our end of a unix socket pair, reading through a buffer of `capacity`
    /// (tests of what reads replies, with a fake server at the other end).
    #[cfg(test)]
    pub(crate) fn over_unix(ours: UnixStream, capacity: usize, timeout: Duration) -> Connection {
        let mut stream = Stream::Unix(ours);
        stream
            .set_timeouts(timeout)
            .expect("a unix socket takes timeouts");
        Connection {
            stream: BufReader::with_capacity(capacity, stream),
            timeout,
            in_step: true,
            line: Vec::new(),
            scratch: Vec::new(),
        }
    }

    pub fn send(&mut self, cmd: &redis::Cmd) -> Result<(), Error> {
        let packed = cmd.get_packed_command();
        let stream = self.stream.get_mut();
        stream.write_all(&packed)?;
        // TLS holds written bytes until flushed.
        stream.flush()?;
        Ok(())
    }

    /// Subscribes to `channels` and reads the confirmation of each; messages follow
    /// ([`Connection::read_within`]). A refusal (an ACL without the channel) is [`Error::Server`].
    pub fn subscribe<C: redis::ToRedisArgs>(&mut self, channels: &[C]) -> Result<(), Error> {
        self.send(redis::cmd("SUBSCRIBE").arg(channels))?;
        for _ in channels {
            // A confirmation names its channel: bounded as a line is.
            match self.read(MAX_LINE as usize)? {
                Reply::Array(Some(confirmation))
                    if confirmation.first() == Some(&Reply::Bulk(Some(b"subscribe".to_vec()))) => {}
                other => {
                    return Err(self.protocol(&format!("a subscribe confirmation, not {other:?}")))
                }
            }
        }
        Ok(())
    }

    /// Sends `cmd` and reads its reply; a bulk string longer than `max_bulk` is refused unread.
    pub fn query(&mut self, cmd: &redis::Cmd, max_bulk: usize) -> Result<Reply, Error> {
        self.send(cmd)?;
        self.read(max_bulk)
    }

    /// Sends `commands` at once, then reads every reply: one round trip. An error reply is
    /// returned once every reply is read, so the connection stays in step.
    pub fn pipeline(
        &mut self,
        commands: &[redis::Cmd],
        max_bulk: usize,
    ) -> Result<Vec<Reply>, Error> {
        for command in commands {
            self.send(command)?;
        }
        let mut replies = Vec::with_capacity(commands.len());
        let mut refused = None;
        for _ in commands {
            match self.read(max_bulk) {
                Ok(reply) => replies.push(reply),
                Err(Error::Server(refusal)) => refused = Some(refusal),
                Err(e) => return Err(e),
            }
        }
        match refused {
            Some(refusal) => Err(Error::Server(refusal)),
            None => Ok(replies),
        }
    }

    /// Reads one reply; a bulk string longer than `max_bulk` is refused unread.
    pub fn read(&mut self, max_bulk: usize) -> Result<Reply, Error> {
        let mut elements = 0;
        self.read_value(&mut |len| len <= max_bulk, 0, &mut elements)
    }

    /// Reads the start of a SSCAN reply, `[cursor, [member, ...]]`: the cursor (0 at the end).
    /// The members follow ([`Connection::read_scan_members`]); the next SSCAN may be sent first,
    /// so Redis gathers the next batch while this one is read.
    pub fn read_scan_cursor(&mut self) -> Result<u64, Error> {
        self.expect_array_len(2)?;
        match self.read(20)? {
            Reply::Bulk(Some(text)) => std::str::from_utf8(&text)
                .ok()
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| self.protocol("a SSCAN cursor")),
            _ => Err(self.protocol("a SSCAN cursor")),
        }
    }

    /// Reads the members of a SSCAN reply into `each`, asking `admit` about each member's length
    /// before its bytes are read: a refusal leaves the rest of the reply unread (out of step).
    /// Every member is read into the same buffer: a batch costs no allocation per member.
    pub fn read_scan_members<E>(
        &mut self,
        mut admit: impl FnMut(usize) -> Result<(), E>,
        mut each: impl FnMut(&[u8]),
    ) -> Result<Result<(), E>, Error> {
        let count = self.read_array_len()?;
        if count > MAX_ELEMENTS {
            return Err(self.protocol(&format!(
                "a SSCAN batch of at most {MAX_ELEMENTS} elements, not {count}"
            )));
        }
        let mut member = std::mem::take(&mut self.scratch);
        let mut read = || {
            for _ in 0..count {
                let len = self.read_bulk_len()?;
                if let Err(refused) = admit(len) {
                    self.in_step = false;
                    return Ok(Err(refused));
                }
                self.read_bulk_body_into(len, &mut member)?;
                each(&member);
            }
            Ok(Ok(()))
        };
        let result = read();
        self.scratch = member;
        result
    }

    /// Waits up to `wait` for the start of a reply (a pub/sub message): `None` if none came. A
    /// reply that has started is read under the connection's own timeout.
    pub fn read_within(&mut self, wait: Duration, max_bulk: usize) -> Result<Option<Reply>, Error> {
        if self.stream.buffer().is_empty() {
            if let Some(fd) = self.stream.get_ref().plain_fd() {
                if !readable_within(fd, wait)? {
                    return Ok(None);
                }
                return self.read(max_bulk).map(Some);
            }
            self.stream.get_mut().set_read_timeout(wait)?;
            let arrived = self.stream.fill_buf().map(|b| !b.is_empty());
            self.stream.get_mut().set_read_timeout(self.timeout)?;
            match arrived {
                Ok(true) => {}
                Ok(false) => {
                    return Err(Error::Io(io::ErrorKind::UnexpectedEof.into()));
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.read(max_bulk).map(Some)
    }

    /// One value, `depth` arrays deep, `elements` counting every element read of the reply.
    fn read_value(
        &mut self,
        admit: &mut dyn FnMut(usize) -> bool,
        depth: usize,
        elements: &mut usize,
    ) -> Result<Reply, Error> {
        let line = self.read_line()?;
        let (kind, rest) = line
            .split_first()
            .ok_or_else(|| self.protocol("an empty line"))?;
        let text = || String::from_utf8_lossy(rest).into_owned();
        match kind {
            b'+' => Ok(Reply::Status(text())),
            b'-' => Err(Error::Server(text())),
            b':' => Ok(Reply::Int(self.number(rest)?)),
            b'$' => match self.number(rest)? {
                len if len < 0 => Ok(Reply::Bulk(None)),
                len => {
                    let len = len as usize;
                    if !admit(len) {
                        self.in_step = false;
                        return Err(Error::TooLong(len));
                    }
                    Ok(Reply::Bulk(Some(self.read_bulk_body(len)?)))
                }
            },
            b'*' => match self.number(rest)? {
                len if len < 0 => Ok(Reply::Array(None)),
                _ if depth >= MAX_DEPTH => {
                    Err(self.protocol(&format!("a reply nested no deeper than {MAX_DEPTH} arrays")))
                }
                len => {
                    let len = len as usize;
                    *elements = elements.saturating_add(len);
                    if *elements > MAX_ELEMENTS {
                        return Err(
                            self.protocol(&format!("a reply of at most {MAX_ELEMENTS} elements"))
                        );
                    }
                    let mut items = Vec::with_capacity(len.min(1 << 16));
                    for _ in 0..len {
                        items.push(self.read_value(admit, depth + 1, elements)?);
                    }
                    Ok(Reply::Array(Some(items)))
                }
            },
            _ => Err(self.protocol(&format!("a line starting {:?}", *kind as char))),
        }
    }

    fn expect_array_len(&mut self, expected: usize) -> Result<(), Error> {
        if self.read_array_len()? != expected {
            return Err(self.protocol(&format!("an array of {expected}")));
        }
        Ok(())
    }

    fn read_array_len(&mut self) -> Result<usize, Error> {
        let line = self.read_line()?;
        match line.split_first() {
            Some((b'*', rest)) => {
                usize::try_from(self.number(rest)?).map_err(|_| self.protocol("an array"))
            }
            Some((b'-', rest)) => Err(Error::Server(String::from_utf8_lossy(rest).into_owned())),
            _ => Err(self.protocol("an array")),
        }
    }

    /// Reads a `$len` line into a buffer kept across calls (it is read once per SET member).
    fn read_bulk_len(&mut self) -> Result<usize, Error> {
        let mut line = std::mem::take(&mut self.line);
        let len =
            self.read_line_into(&mut line)
                .and_then(|()| match line.split_first() {
                    Some((b'$', rest)) => usize::try_from(self.number(rest)?)
                        .map_err(|_| self.protocol("a bulk string")),
                    _ => Err(self.protocol("a bulk string")),
                });
        self.line = line;
        len
    }

    fn read_bulk_body(&mut self, len: usize) -> Result<Vec<u8>, Error> {
        let mut body = Vec::new();
        self.read_bulk_body_into(len, &mut body)?;
        Ok(body)
    }

    fn read_bulk_body_into(&mut self, len: usize, body: &mut Vec<u8>) -> Result<(), Error> {
        body.clear();
        body.resize(len + 2, 0);
        self.stream
            .read_exact(body)
            .inspect_err(|_| self.in_step = false)?;
        if !body.ends_with(b"\r\n") {
            return Err(self.protocol("a bulk string's end"));
        }
        body.truncate(len);
        Ok(())
    }

    /// One line without its CRLF, at most `MAX_LINE` long.
    fn read_line(&mut self) -> Result<Vec<u8>, Error> {
        let mut line = Vec::new();
        self.read_line_into(&mut line)?;
        Ok(line)
    }

    fn read_line_into(&mut self, line: &mut Vec<u8>) -> Result<(), Error> {
        line.clear();
        let read = (&mut self.stream).take(MAX_LINE).read_until(b'\n', line);
        if let Err(e) = read {
            self.in_step = false;
            return Err(e.into());
        }
        if line.is_empty() {
            self.in_step = false;
            return Err(Error::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        if !line.ends_with(b"\r\n") {
            return Err(self.protocol("a line ending in CRLF"));
        }
        line.truncate(line.len() - 2);
        Ok(())
    }

    fn number(&mut self, text: &[u8]) -> Result<i64, Error> {
        std::str::from_utf8(text)
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| self.protocol("a number"))
    }

    fn protocol(&mut self, expected: &str) -> Error {
        self.in_step = false;
        Error::Protocol(format!("expected {expected}"))
    }
}

/// Whether `fd` has bytes to read (or its peer hung up) within `wait`. ppoll(2) sleeps on a
/// high-resolution timer: a socket's own read timeout counts in scheduler ticks (4 ms at
/// Debian's HZ=250), which made a 2 ms wait for the messages that follow a change last 6-8 ms.
fn readable_within(fd: RawFd, wait: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = libc::timespec {
            tv_sec: left.as_secs() as libc::time_t,
            tv_nsec: left.subsec_nanos() as libc::c_long,
        };
        let mut pollfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd on the stack, a timeout on the stack, no signal mask.
        let ready = unsafe { libc::ppoll(&mut pollfd, 1, &timeout, std::ptr::null()) };
        match ready {
            0 => return Ok(false),
            n if n > 0 => return Ok(true),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::thread;

    /// A connection reading canned bytes from a unix socket pair.
    fn replying(bytes: &[u8]) -> Connection {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut theirs = theirs;
        theirs.write_all(bytes).unwrap();
        drop(theirs);
        over(ours, 16)
    }

    fn over(ours: UnixStream, capacity: usize) -> Connection {
        Connection::over_unix(ours, capacity, Duration::from_secs(1))
    }

    #[test]
    fn reads_each_kind_of_reply() {
        let mut con = replying(
            b"+OK\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*2\r\n$1\r\nx\r\n:1\r\n*-1\r\n-ERR no\r\n",
        );
        assert_eq!(con.read(10).unwrap(), Reply::Status("OK".into()));
        assert_eq!(con.read(10).unwrap(), Reply::Int(42));
        assert_eq!(con.read(10).unwrap(), Reply::Bulk(Some(b"abc".to_vec())));
        assert_eq!(con.read(10).unwrap(), Reply::Bulk(None));
        assert_eq!(
            con.read(10).unwrap(),
            Reply::Array(Some(vec![Reply::Bulk(Some(b"x".to_vec())), Reply::Int(1)]))
        );
        assert_eq!(con.read(10).unwrap(), Reply::Array(None));
        assert!(matches!(con.read(10), Err(Error::Server(m)) if m == "ERR no"));
        assert!(con.in_step());
    }

    #[test]
    fn a_bulk_string_over_the_bound_is_refused_before_its_bytes_are_read() {
        let mut con = replying(b"$5\r\nhello\r\n");
        assert!(matches!(con.read(4), Err(Error::TooLong(5))));
        assert!(!con.in_step());
    }

    #[test]
    fn scan_replies_ask_before_each_member() {
        let mut con = replying(b"*2\r\n$2\r\n17\r\n*2\r\n$3\r\none\r\n$5\r\nthree\r\n*2\r\n$1\r\n0\r\n*1\r\n$9\r\n123456789\r\n");
        let asked = RefCell::new(Vec::new());
        let mut members = Vec::new();
        assert_eq!(con.read_scan_cursor().unwrap(), 17);
        con.read_scan_members(
            |len| {
                asked.borrow_mut().push(len);
                Ok::<(), ()>(())
            },
            |member| members.push(member.to_vec()),
        )
        .unwrap()
        .unwrap();
        assert_eq!(members, vec![b"one".to_vec(), b"three".to_vec()]);
        assert!(con.in_step());
        assert_eq!(con.read_scan_cursor().unwrap(), 0);
        let refused = con
            .read_scan_members(|len| if len > 4 { Err(len) } else { Ok(()) }, |_| {})
            .unwrap();
        assert_eq!(refused, Err(9));
        assert!(!con.in_step());
        assert_eq!(asked.into_inner(), vec![3, 5]);
    }

    #[test]
    fn garbage_and_truncation_are_errors_not_panics() {
        for bytes in [
            &b"?\r\n"[..],
            b"$3\r\nab",
            b"*2\r\n:1\r\n",
            b":x\r\n",
            b"+OK\n",
            b"",
        ] {
            let mut con = replying(bytes);
            assert!(con.read(10).is_err(), "{bytes:?}");
            assert!(!con.in_step());
        }
        let mut long = b"+".to_vec();
        long.extend(std::iter::repeat_n(b'x', MAX_LINE as usize + 10));
        assert!(replying(&long).read(10).is_err());
    }

    /// A server that answers with `reply` until the reader hangs up.
    fn endless(reply: &'static [u8]) -> Connection {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        thread::spawn(move || while theirs.write_all(reply).is_ok() {});
        over(ours, READ_BUFFER)
    }

    #[test]
    fn a_reply_nested_without_end_is_refused_not_followed() {
        // Before the bound, each level was a frame of read_value: the stack overflowed.
        let mut con = endless(b"*1\r\n");
        match con.read(10) {
            Err(Error::Protocol(why)) => assert!(why.contains("nested no deeper than 8"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(!con.in_step());
    }

    /// A server that sends `header`, then `element` until the reader hangs up.
    fn endless_after(header: &'static [u8], element: &'static [u8]) -> Connection {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        thread::spawn(move || {
            if theirs.write_all(header).is_ok() {
                while theirs.write_all(element).is_ok() {}
            }
        });
        over(ours, READ_BUFFER)
    }

    #[test]
    fn a_reply_of_endless_elements_is_refused() {
        let mut con = endless_after(b"*2147483647\r\n", b":1\r\n");
        match con.read(10) {
            Err(Error::Protocol(why)) => assert!(why.contains("elements"), "{why}"),
            other => panic!("{other:?}"),
        }
        let mut scan = endless_after(b"*2147483647\r\n", b"$0\r\n\r\n");
        match scan.read_scan_members(|_| Ok::<(), ()>(()), |_| {}) {
            Err(Error::Protocol(why)) => assert!(why.contains("elements"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(!scan.in_step());
    }

    #[test]
    fn subscribing_reads_each_confirmation_and_tells_a_refusal() {
        let confirmations =
            b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n";
        for (reply, ok) in [
            (&confirmations[..], true),
            (
                b"-NOPERM this user has no permissions to access the 'a' channel\r\n",
                false,
            ),
        ] {
            let (ours, mut theirs) = UnixStream::pair().unwrap();
            theirs.write_all(reply).unwrap();
            let mut con = over(ours, READ_BUFFER);
            match con.subscribe(&["a", "b"]) {
                Ok(()) => assert!(ok),
                Err(Error::Server(refusal)) => {
                    assert!(!ok);
                    assert!(refusal.starts_with("NOPERM"));
                }
                Err(e) => panic!("{e}"),
            }
            let mut sent = vec![0; 64];
            let n = theirs.read(&mut sent).unwrap();
            assert_eq!(
                &sent[..n],
                b"*3\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n$1\r\nb\r\n"
            );
        }
    }

    #[test]
    fn a_message_that_has_not_started_is_no_message() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let mut con = over(ours, READ_BUFFER);
        assert_eq!(
            con.read_within(Duration::from_millis(10), 10).unwrap(),
            None
        );
        theirs.write_all(b":7\r\n").unwrap();
        assert_eq!(
            con.read_within(Duration::from_millis(500), 10).unwrap(),
            Some(Reply::Int(7))
        );
        drop(theirs);
        assert!(con.read_within(Duration::from_millis(10), 10).is_err());
    }
}
