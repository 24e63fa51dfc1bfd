//! `<service> --healthcheck`: the container health check, run by the service's own binary so
//! that runtime images need no shell, curl or script. It asks the service's `/readyz` on the
//! operations port its configuration names (`server.ops_listen`, else `server.http_listen`) (loaded exactly as the running service loads it) and
//! succeeds only on `200`: a draining service answers 503 and so reports unhealthy.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Nothing accepted the connection, or the exchange broke off.
    #[error("no answer from {addr}: {source}")]
    Io {
        /// The address probed.
        addr: SocketAddr,
        /// The failure.
        source: std::io::Error,
    },
    /// The service answered, but not with `200`.
    #[error("{addr}/readyz answered {status_line:?}")]
    NotReady {
        /// The address probed.
        addr: SocketAddr,
        /// The first line of the answer.
        status_line: String,
    },
}

/// Where to probe a listener bound to `listen`: a wildcard address becomes loopback.
pub fn probe_addr(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// `GET /readyz` on `addr` over plain HTTP/1.1, bounded by `timeout` per step.
pub fn readyz(addr: SocketAddr, timeout: Duration) -> Result<(), ProbeError> {
    let stream = connect(addr, timeout)?;
    exchange(stream, addr)
}

fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ProbeError> {
    let io = |source| ProbeError::Io { addr, source };
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    Ok(stream)
}

/// `GET /readyz` on `addr` over HTTPS, accepting exactly the certificate in `cert` (the
/// service's own `server.tls.cert`: the probe runs beside it), bounded by `timeout` per step.
pub fn readyz_tls(addr: SocketAddr, cert: &Path, timeout: Duration) -> Result<(), ProbeError> {
    let io = |source| ProbeError::Io { addr, source };
    let pem = std::fs::read(cert).map_err(io)?;
    let pinned = CertificateDer::from_pem_slice(&pem)
        .map_err(|err| io(std::io::Error::other(format!("{}: {err}", cert.display()))))?;
    let verifier = Arc::new(Pinned {
        der: pinned.to_vec(),
        algorithms: crate::tls::provider().signature_verification_algorithms,
    });
    let mut config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|err| io(std::io::Error::other(err)))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from("localhost").map_err(|err| io(std::io::Error::other(err)))?;
    let connection = rustls::ClientConnection::new(Arc::new(config), name)
        .map_err(|err| io(std::io::Error::other(err)))?;
    let stream = rustls::StreamOwned::new(connection, connect(addr, timeout)?);
    exchange(stream, addr)
}

/// Accepts only one certificate (signatures still checked).
#[derive(Debug)]
struct Pinned {
    der: Vec<u8>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.der.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the service serves another certificate than server.tls.cert".to_owned(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Sends `GET /readyz` on `stream` and reads the status line.
fn exchange<S: Read + Write>(mut stream: S, addr: SocketAddr) -> Result<(), ProbeError> {
    let io = |source| ProbeError::Io { addr, source };
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(io)?;
    let mut head = [0_u8; 64];
    let mut filled = 0;
    while filled < head.len() && !head[..filled].contains(&b'\n') {
        let read = stream.read(&mut head[filled..]).map_err(io)?;
        if read == 0 {
            break;
        }
        filled += read;
    }
    let text = String::from_utf8_lossy(&head[..filled]);
    let status_line = text.lines().next().unwrap_or_default().trim().to_owned();
    let mut parts = status_line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(version), Some("200")) if version.starts_with("HTTP/1.") => Ok(()),
        _ => Err(ProbeError::NotReady { addr, status_line }),
    }
}

/// The listener `/readyz` is asked on: `server.ops_listen` when set, else `server.http_listen`.
fn probed_listen(config: &serde_json::Value) -> Option<SocketAddr> {
    let address = |pointer: &str| {
        config
            .pointer(pointer)
            .and_then(serde_json::Value::as_str)
            .and_then(|text| text.parse::<SocketAddr>().ok())
    };
    address("/server/ops_listen").or_else(|| address("/server/http_listen"))
}

/// Runs the probe for a loaded configuration (any service's: it must have `server.http_listen`)
/// and exits the process: 0 when ready, 1 otherwise (with the reason on stderr). `/readyz` is
/// asked on `server.ops_listen` when it is set: the HTTP port answers 404 for it then.
pub fn exit_with_probe(config: &serde_json::Value) -> ! {
    let listen = probed_listen(config);
    let text = |pointer: &str| {
        config
            .pointer(pointer)
            .and_then(serde_json::Value::as_str)
            .filter(|text| !text.is_empty())
    };
    // The HTTP side serves TLS when both files are set, unless `tls.http` turns it off.
    let tls_cert = match (text("/server/tls/cert"), text("/server/tls/key")) {
        (Some(cert), Some(_))
            if config.pointer("/server/tls/http") != Some(&serde_json::Value::Bool(false)) =>
        {
            Some(PathBuf::from(cert))
        }
        _ => None,
    };
    let probe = |listen: SocketAddr| match &tls_cert {
        Some(cert) => readyz_tls(probe_addr(listen), cert, Duration::from_secs(3)),
        None => readyz(probe_addr(listen), Duration::from_secs(3)),
    };
    let code = match listen {
        Some(listen) => match probe(listen) {
            Ok(()) => 0,
            Err(err) => {
                let _ = writeln!(std::io::stderr().lock(), "healthcheck: {err}");
                1
            }
        },
        None => {
            let _ = writeln!(
                std::io::stderr().lock(),
                "healthcheck: the configuration has no server.http_listen address"
            );
            2
        }
    };
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn answer_once(reply: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0_u8; 256];
            let _ = stream.read(&mut request);
            stream.write_all(reply).unwrap();
        });
        addr
    }

    #[test]
    fn ready_only_on_200() {
        let ok = answer_once(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        readyz(ok, Duration::from_secs(3)).unwrap();
        let draining = answer_once(b"HTTP/1.1 503 Service Unavailable\r\n\r\n");
        let err = readyz(draining, Duration::from_secs(3)).unwrap_err();
        assert!(err.to_string().contains("503"), "{err}");
    }

    #[test]
    fn nothing_listening_is_an_error_naming_the_address() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = readyz(addr, Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }

    #[test]
    fn the_operations_listener_is_probed_when_it_is_set() {
        let mut config = serde_json::to_value(crate::config::ServerConfig::default()).unwrap();
        let config = serde_json::json!({ "server": config.take() });
        assert_eq!(
            probed_listen(&config),
            Some("127.0.0.1:8081".parse().unwrap())
        );
        let with_ops = serde_json::json!({
            "server": { "http_listen": "0.0.0.0:8080", "ops_listen": "0.0.0.0:9464" }
        });
        assert_eq!(
            probed_listen(&with_ops),
            Some("0.0.0.0:9464".parse().unwrap())
        );
    }

    #[test]
    fn wildcard_listeners_are_probed_on_loopback() {
        assert_eq!(
            probe_addr("0.0.0.0:8081".parse().unwrap()),
            "127.0.0.1:8081".parse().unwrap()
        );
        assert_eq!(
            probe_addr("[::]:8081".parse().unwrap()),
            "[::1]:8081".parse().unwrap()
        );
        assert_eq!(
            probe_addr("10.1.2.3:8081".parse().unwrap()),
            "10.1.2.3:8081".parse().unwrap()
        );
    }
}
