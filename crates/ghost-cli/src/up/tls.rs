//! Where `ghost up` serves TLS: the router's executor port always (executors dial it from
//! other machines with their token), the gateway's HTTP side when a certificate is given.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::error::CliError;
use crate::system::SystemConfig;
use crate::up_config::UpConfig;

/// Puts TLS where `ghost up` serves it: the router's executor port (when one is asked for)
/// always, and the gateway's HTTP side when a certificate was given (`[tls]`/`--tls-cert`).
/// Without a given certificate, the private CA under `<data-dir>/tls/` issues one for the
/// executor port's address, `localhost`, the public URL's host and `[tls] names`. A section's
/// own `server.tls.cert` is kept. Returns the CA executors must trust, when one was made.
pub(super) fn serve_tls(config: &mut UpConfig) -> Result<Option<PathBuf>, CliError> {
    let given = config.tls.cert.clone().zip(config.tls.key.clone());
    if let Some((cert, key)) = &given {
        gateway_https(&mut config.system, cert, key)?;
    }
    let Some(addr) = config.system.router.executor_listen else {
        return Ok(None);
    };
    if config.system.router.server.tls.cert.is_some() {
        return Ok(None);
    }
    let (cert, key, ca) = match given {
        Some((cert, key)) => (cert, key, None),
        None => {
            let (cert, key, ca) = made_certificate(config, addr)?;
            (cert, key, Some(ca))
        }
    };
    let tls = &mut config.system.router.server.tls;
    tls.cert = Some(cert);
    tls.key = Some(key);
    // The router's own listeners stay as configured (loopback, plaintext by default); the
    // executor port is TLS always.
    tls.grpc = false;
    tls.http = false;
    Ok(ca)
}

/// The given certificate on the gateway's HTTP side, unless its section set one; refuses a
/// file that is not there.
fn gateway_https(system: &mut SystemConfig, cert: &Path, key: &Path) -> Result<(), CliError> {
    for path in [cert, key] {
        if !path.is_file() {
            return Err(CliError::Settings(format!(
                "[tls] {}: no such file",
                path.display()
            )));
        }
    }
    let tls = &mut system.gateway.server.tls;
    if tls.cert.is_none() {
        tls.cert = Some(cert.to_owned());
        tls.key = Some(key.to_owned());
        tls.grpc = false;
        tls.http = true;
    }
    Ok(())
}

/// The private CA's certificate for the executor port at `addr` (made or renewed as needed):
/// (certificate, key, CA).
fn made_certificate(
    config: &UpConfig,
    addr: SocketAddr,
) -> Result<(PathBuf, PathBuf, PathBuf), CliError> {
    let mut extra = config.tls.names.clone();
    if let Some(host) = reqwest::Url::parse(&config.system.gateway.public_url)
        .ok()
        .and_then(|url| url.host_str().map(str::to_owned))
    {
        extra.push(
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
        );
    }
    let names = crate::tls::names_for(&[addr.ip()], &extra);
    let ensured = crate::tls::ensure(
        &config.data_dir.join("tls"),
        &names,
        time::OffsetDateTime::now_utc(),
    )?;
    if let Some(why) = &ensured.issued {
        tracing::info!(reason = %why, names = ?names, "issued the executor port's certificate");
    }
    Ok((ensured.files.cert, ensured.files.key, ensured.files.ca))
}
