//! TLS for `rediss://`: rustls with the ring provider, handed to each client config rather than
//! installed process-wide, so no install order can panic a thread and nothing else in nginx's
//! process is touched. Not native-tls: inside nginx it would bind to whichever libssl nginx
//! loaded (OpenResty ships its own), a library and version gray was neither built nor tested with.
//! The CA, certificate and key files are read once, when the options are checked, so a missing or
//! wrong file is an error of `configure` naming the option, not a failure at every reconnect.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::WantsClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, ConfigBuilder, RootCertStore, StreamOwned};

use gray_core::endpoint::TlsFiles;

/// A client configuration built from the TLS options' files, shared by every connection.
#[derive(Clone)]
pub struct Tls(Arc<ClientConfig>);

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tls")
    }
}

pub type Stream = StreamOwned<ClientConnection, Socket>;

impl Tls {
    /// Reads the files (a certificate without its key was refused with the options); an
    /// error names the option whose file is wrong and why.
    pub fn load(files: &TlsFiles) -> Result<Tls, String> {
        let roots = match &files.ca {
            Some(path) => ca_file(path)?,
            None => system_roots()?,
        };
        let builder = with_ring(roots)?;
        let config = match (&files.cert, &files.key) {
            (Some(cert), Some(key)) => {
                let chain = certificates("tls_cert", cert)?;
                let key_der = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("opts.tls_key: {key}: {e}"))?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| format!("opts.tls_cert and opts.tls_key: {e}"))?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(Tls(Arc::new(config)))
    }

    /// Runs the handshake with `host` over `tcp`, done by `deadline` or refused as timed out.
    /// The server's certificate must name `host` (a name or an address).
    pub fn handshake(
        &self,
        host: &str,
        tcp: TcpStream,
        deadline: Instant,
    ) -> Result<Stream, io::Error> {
        let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{host}: {e}")))?
            .to_owned();
        let mut tls = ClientConnection::new(self.0.clone(), name)
            .map_err(|e| io::Error::other(format!("TLS: {e}")))?;
        let mut socket = Socket {
            tcp,
            read_timeout: Duration::ZERO,
            write_timeout: Duration::ZERO,
            deadline,
        };
        while tls.is_handshaking() {
            tls.complete_io(&mut socket).map_err(|e| match e.kind() {
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the TLS handshake did not finish in time",
                ),
                _ => io::Error::new(e.kind(), format!("TLS handshake: {e}")),
            })?;
        }
        Ok(StreamOwned::new(tls, socket))
    }
}

/// The TCP socket under TLS. A plain socket's timeout bounds each read(2); rustls makes as many
/// as it needs within one call (the handshake, a record arriving in pieces, records that carry
/// no data such as session tickets), so a timeout set on the socket would be given afresh to
/// each. Here the timeout is a budget for the whole call ([`Socket::start_read`],
/// [`Socket::start_write`]), every read(2) and write(2) getting what is left of it.
pub struct Socket {
    tcp: TcpStream,
    read_timeout: Duration,
    write_timeout: Duration,
    deadline: Instant,
}

impl Socket {
    pub fn set_read_timeout(&mut self, timeout: Duration) {
        self.read_timeout = timeout;
    }

    pub fn set_write_timeout(&mut self, timeout: Duration) {
        self.write_timeout = timeout;
    }

    pub fn set_nodelay(&self) -> io::Result<()> {
        self.tcp.set_nodelay(true)
    }

    /// A read of the TLS stream starts: it has the read timeout, all told.
    pub fn start_read(&mut self) {
        self.deadline = Instant::now() + self.read_timeout;
    }

    /// A write (or flush) of the TLS stream starts: it has the write timeout, all told.
    pub fn start_write(&mut self) {
        self.deadline = Instant::now() + self.write_timeout;
    }

    fn left(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(left)
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tcp.set_read_timeout(Some(self.left()?))?;
        self.tcp.read(buf)
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.set_write_timeout(Some(self.left()?))?;
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

/// Marks an error of TLS itself (an alert from the server, a bad record) as such: rustls's own
/// text ("received fatal alert: CertificateRequired") does not say it is about TLS.
pub fn name_error(e: io::Error) -> io::Error {
    match e.get_ref() {
        Some(inner) if inner.is::<rustls::Error>() => {
            io::Error::new(e.kind(), format!("TLS: {inner}"))
        }
        _ => e,
    }
}

/// A client config builder with the ring provider and the `roots` to check servers with.
fn with_ring(roots: RootCertStore) -> Result<ConfigBuilder<ClientConfig, WantsClientCert>, String> {
    // rustls 0.23.48 deprecates ring's provider for lacking post-quantum key exchange, which
    // no Redis offers (it links the system's OpenSSL; Debian 12's is 3.0). The alternative,
    // aws-lc-rs, would build a second C crypto library into a module nginx loads.
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    Ok(ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots))
}

/// The PEM certificates in the file `path` of option `option`: at least one.
fn certificates(option: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("opts.{option}: {path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("opts.{option}: {path} holds no PEM certificate"));
    }
    Ok(certs)
}

fn ca_file(path: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in certificates("tls_ca", path)? {
        roots
            .add(cert)
            .map_err(|e| format!("opts.tls_ca: {path}: {e}"))?;
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let why = found
            .errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        return Err(format!(
            "opts.redis is a rediss:// URL but the system has no CA certificates to check it with ({}); give the server's CA as opts.tls_ca",
            if why.is_empty() { "none found" } else { &why }
        ));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(ca: Option<&str>, cert: Option<&str>, key: Option<&str>) -> TlsFiles {
        TlsFiles {
            ca: ca.map(str::to_string),
            cert: cert.map(str::to_string),
            key: key.map(str::to_string),
        }
    }

    /// A server that starts a handshake record and sends the rest a byte at a time, too slowly.
    #[test]
    fn a_handshake_dripped_slowly_is_cut_at_the_deadline() {
        use std::net::TcpListener;
        use std::thread;

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (mut peer, _) = listener.accept().unwrap();
            let _ = peer.write_all(&[0x16, 0x03, 0x03, 0x40, 0x00]);
            for _ in 0..40 {
                thread::sleep(Duration::from_millis(50));
                if peer.write_all(&[0]).is_err() {
                    break;
                }
            }
        });
        let config = with_ring(RootCertStore::empty()).unwrap();
        let tls = Tls(Arc::new(config.with_no_client_auth()));
        let started = Instant::now();
        let err = tls
            .handshake(
                "127.0.0.1",
                TcpStream::connect(address).unwrap(),
                started + Duration::from_millis(300),
            )
            .map(|_| ())
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(err.to_string(), "the TLS handshake did not finish in time");
        assert!(
            started.elapsed() < Duration::from_millis(600),
            "{:?}",
            started.elapsed()
        );
        server.join().unwrap();
    }

    fn err(files: &TlsFiles) -> String {
        Tls::load(files).map(|_| ()).unwrap_err()
    }

    #[test]
    fn wrong_files_name_the_option() {
        let dir = std::env::temp_dir().join(format!("gray-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello\n").unwrap();
        let not_pem = not_pem.to_str().unwrap();
        assert!(err(&files(Some("/nonexistent/ca.pem"), None, None))
            .starts_with("opts.tls_ca: /nonexistent/ca.pem: "),);
        assert_eq!(
            err(&files(Some(not_pem), None, None)),
            format!("opts.tls_ca: {not_pem} holds no PEM certificate")
        );
        assert_eq!(
            err(&files(None, Some(not_pem), Some(not_pem))),
            format!("opts.tls_cert: {not_pem} holds no PEM certificate")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
