//! The private CA and the server certificate `ghost up` (and `ghost tls init`) make under
//! `<data-dir>/tls/`: `ca.pem` (what executors trust: `--ca`), `ca-key.pem` (kept to re-issue
//! the server certificate), `server.pem` and `server-key.pem`.
//!
//! The CA is made once. The server certificate is issued again, from the same CA, when it is
//! missing, was not issued by that CA, does not name every address it must serve, or has
//! less than [`RENEW_BEFORE`] left; executors that trust `ca.pem` never notice. Keys are
//! written 0600, every file through a temporary file and a rename, the key before the
//! certificate, so a service that reloads on change never reads half a file.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use crate::error::CliError;

/// How long the CA is valid.
const CA_VALIDITY: Duration = Duration::days(3650);
/// How long a server certificate is valid (the longest browsers accept, should one look).
const SERVER_VALIDITY: Duration = Duration::days(397);
/// A server certificate with less than this left is issued again at start.
pub const RENEW_BEFORE: Duration = Duration::days(30);

/// The files of a `tls/` directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA certificate executors trust.
    pub ca: PathBuf,
    /// The CA's private key (0600).
    pub ca_key: PathBuf,
    /// The server certificate chain (leaf, then the CA).
    pub cert: PathBuf,
    /// The server's private key (0600).
    pub key: PathBuf,
}

impl TlsFiles {
    /// The files' paths in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca: dir.join("ca.pem"),
            ca_key: dir.join("ca-key.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server-key.pem"),
        }
    }
}

/// What [`ensure`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ensured {
    /// The files.
    pub files: TlsFiles,
    /// A new CA was made (executors must be given the new `ca.pem`).
    pub new_ca: bool,
    /// The server certificate was issued now, and why.
    pub issued: Option<String>,
}

fn tls_error(path: &Path, what: &str, err: impl std::fmt::Display) -> CliError {
    CliError::Settings(format!("{} ({what}): {err}", path.display()))
}

/// Writes `contents` to `path` through a temporary file in the same directory and a rename,
/// with `mode` set before any byte is written.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), CliError> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|err| tls_error(path, "no randomness", err))?;
    let temp = dir.join(format!(
        ".{name}.{}.tmp",
        nonce.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result.map_err(|err| tls_error(path, "cannot write", err))
}

fn random_serial() -> Result<SerialNumber, CliError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|err| CliError::Other(anyhow::anyhow!("no randomness for a serial: {err}")))?;
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

fn ca_params(now: OffsetDateTime) -> Result<CertificateParams, CliError> {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Ghost Runner");
    name.push(
        DnType::CommonName,
        format!("Ghost Runner private CA {}", now.unix_timestamp()),
    );
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - Duration::hours(1);
    params.not_after = now + CA_VALIDITY;
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

/// The CA of `files`: loaded when both files exist, made when neither does.
fn ca(files: &TlsFiles, now: OffsetDateTime) -> Result<(Issuer<'static, KeyPair>, bool), CliError> {
    match (files.ca.exists(), files.ca_key.exists()) {
        (true, true) => {
            let key_pem = std::fs::read_to_string(&files.ca_key)
                .map_err(|err| tls_error(&files.ca_key, "cannot read", err))?;
            let key = KeyPair::from_pem(&key_pem)
                .map_err(|err| tls_error(&files.ca_key, "not a PEM private key", err))?;
            let cert_pem = std::fs::read_to_string(&files.ca)
                .map_err(|err| tls_error(&files.ca, "cannot read", err))?;
            let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
                .map_err(|err| tls_error(&files.ca, "not a PEM CA certificate", err))?;
            Ok((issuer, false))
        }
        (false, false) => {
            let key = KeyPair::generate()
                .map_err(|err| CliError::Other(anyhow::anyhow!("cannot make a CA key: {err}")))?;
            let params = ca_params(now)?;
            let cert = params
                .self_signed(&key)
                .map_err(|err| CliError::Other(anyhow::anyhow!("cannot make the CA: {err}")))?;
            write_atomically(&files.ca_key, key.serialize_pem().as_bytes(), 0o600)?;
            write_atomically(&files.ca, cert.pem().as_bytes(), 0o644)?;
            Ok((Issuer::new(params, key), true))
        }
        (true, false) => Err(tls_error(
            &files.ca_key,
            "missing",
            format!(
                "{} exists without its key: restore the key, or remove both to make a new CA \
                 (executors must then be given the new ca.pem)",
                files.ca.display()
            ),
        )),
        (false, true) => Err(tls_error(
            &files.ca,
            "missing",
            format!(
                "{} exists without its certificate: restore it, or remove both to make a new CA",
                files.ca_key.display()
            ),
        )),
    }
}

/// Why the server certificate at `files.cert` must be issued again, or `None` when it serves.
fn reason_to_issue(files: &TlsFiles, names: &[String], now: OffsetDateTime) -> Option<String> {
    if !files.cert.exists() || !files.key.exists() {
        return Some("none yet".to_owned());
    }
    let Ok(pem) = std::fs::read(&files.cert) else {
        return Some("unreadable".to_owned());
    };
    let Ok(ca_pem) = std::fs::read(&files.ca) else {
        return Some("the CA is unreadable".to_owned());
    };
    let parse = |bytes: &[u8]| -> Option<Vec<u8>> {
        x509_parser::pem::parse_x509_pem(bytes)
            .ok()
            .map(|(_, pem)| pem.contents)
    };
    let (Some(leaf_der), Some(ca_der)) = (parse(&pem), parse(&ca_pem)) else {
        return Some("not a PEM certificate".to_owned());
    };
    let (Ok((_, leaf)), Ok((_, ca))) = (
        x509_parser::parse_x509_certificate(&leaf_der),
        x509_parser::parse_x509_certificate(&ca_der),
    ) else {
        return Some("not a certificate".to_owned());
    };
    if leaf.verify_signature(Some(ca.public_key())).is_err() {
        return Some("not issued by this CA".to_owned());
    }
    let key_matches = std::fs::read_to_string(&files.key)
        .ok()
        .and_then(|pem| KeyPair::from_pem(&pem).ok())
        .is_some_and(|key| {
            key.public_key_raw() == leaf.public_key().subject_public_key.data.as_ref()
        });
    if !key_matches {
        return Some("its key does not match it".to_owned());
    }
    let left = leaf.validity().not_after.timestamp() - now.unix_timestamp();
    if left < RENEW_BEFORE.whole_seconds() {
        return Some(format!("{} days left", left.max(0) / 86_400));
    }
    let mut has: Vec<String> = Vec::new();
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => has.push(dns.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(raw) => {
                    let ip = match raw.len() {
                        4 => <[u8; 4]>::try_from(*raw).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*raw).ok().map(IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        has.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    let missing: Vec<&String> = names
        .iter()
        .filter(|name| !has.iter().any(|h| h.eq_ignore_ascii_case(name)))
        .collect();
    if missing.is_empty() {
        None
    } else {
        Some(format!(
            "it does not name {}",
            missing
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

/// The names a server certificate for these listen addresses must carry: `localhost`, the
/// loopback addresses, each address that is not unspecified (for `0.0.0.0`/`::` the machine's
/// host name), and `extra` (public DNS names, the public URL's host), once each, in order.
pub fn names_for(listen: &[IpAddr], extra: &[String]) -> Vec<String> {
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    for ip in listen {
        if ip.is_unspecified() {
            if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
                let host = host.trim();
                if !host.is_empty() {
                    names.push(host.to_owned());
                }
            }
        } else {
            names.push(ip.to_string());
        }
    }
    names.extend(extra.iter().cloned());
    let mut seen = Vec::new();
    names.retain(|name| {
        let fresh = !seen.contains(&name.to_ascii_lowercase());
        seen.push(name.to_ascii_lowercase());
        fresh
    });
    names
}

/// Makes (or keeps) the CA and a server certificate naming `names` in `dir`, created 0700.
pub fn ensure(dir: &Path, names: &[String], now: OffsetDateTime) -> Result<Ensured, CliError> {
    ensure_files(dir, TlsFiles::in_dir(dir), names, now)
}

fn create_private_dir(dir: &Path) -> Result<(), CliError> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|err| tls_error(dir, "cannot create", err))?;
    }
    Ok(())
}

/// [`ensure`] with the files' places given (the CA key may live in a directory of its own).
fn ensure_files(
    dir: &Path,
    files: TlsFiles,
    names: &[String],
    now: OffsetDateTime,
) -> Result<Ensured, CliError> {
    if let Some(bad) = names.iter().find(|name| {
        name.is_empty()
            || name.len() > 253
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '*'))
    }) {
        return Err(CliError::Settings(format!(
            "{bad:?} cannot be a certificate name: give a DNS name or an IP address"
        )));
    }
    create_private_dir(dir)?;
    if let Some(parent) = files.ca_key.parent() {
        create_private_dir(parent)?;
    }
    let (issuer, new_ca) = ca(&files, now)?;
    let reason = if new_ca {
        Some("a new CA".to_owned())
    } else {
        reason_to_issue(&files, names, now)
    };
    if reason.is_some() {
        let mut params = CertificateParams::default();
        let mut subject = DistinguishedName::new();
        subject.push(DnType::OrganizationName, "Ghost Runner");
        subject.push(
            DnType::CommonName,
            names.first().map_or("localhost", String::as_str),
        );
        params.distinguished_name = subject;
        params.subject_alt_names = names
            .iter()
            .map(|name| match name.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => name
                    .clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|err| {
                        CliError::Settings(format!("{name:?} cannot be a certificate name: {err}"))
                    }),
            })
            .collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = now - Duration::hours(1);
        params.not_after = now + SERVER_VALIDITY;
        params.serial_number = Some(random_serial()?);
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()
            .map_err(|err| CliError::Other(anyhow::anyhow!("cannot make a server key: {err}")))?;
        let cert = params.signed_by(&key, &issuer).map_err(|err| {
            CliError::Other(anyhow::anyhow!(
                "cannot issue the server certificate: {err}"
            ))
        })?;
        let ca_pem = std::fs::read_to_string(&files.ca)
            .map_err(|err| tls_error(&files.ca, "cannot read", err))?;
        write_atomically(&files.key, key.serialize_pem().as_bytes(), 0o600)?;
        write_atomically(
            &files.cert,
            format!("{}{}", cert.pem(), ca_pem).as_bytes(),
            0o644,
        )?;
    }
    Ok(Ensured {
        files,
        new_ca,
        issued: reason,
    })
}

/// A fresh service credential: 32 random bytes as hex.
pub fn random_token() -> Result<String, CliError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|err| CliError::Other(anyhow::anyhow!("no randomness for a token: {err}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// `ghost tls init`: the CA, a server certificate for `names` (plus `localhost` and the
/// loopback addresses) and, unless one exists, an `internal-token` file (0600) holding a
/// fresh service credential, in `dir`. What compose's init container runs.
///
/// `ca_key_dir` keeps `ca-key.pem` elsewhere (a volume only the init container mounts), and
/// `export_ca` copies `ca.pem` alone into another directory (what an executor, which runs
/// untrusted commands, mounts instead of the one holding keys and the credential).
pub fn init(
    dir: &Path,
    names: &[String],
    ca_key_dir: Option<&Path>,
    export_ca: Option<&Path>,
) -> Result<(Ensured, PathBuf), CliError> {
    let names = names_for(&[], names);
    let mut files = TlsFiles::in_dir(dir);
    if let Some(key_dir) = ca_key_dir {
        files.ca_key = key_dir.join("ca-key.pem");
    }
    let ensured = ensure_files(dir, files, &names, OffsetDateTime::now_utc())?;
    let token = dir.join("internal-token");
    if !token.exists() {
        write_atomically(&token, format!("{}\n", random_token()?).as_bytes(), 0o600)?;
    }
    if let Some(public) = export_ca {
        create_private_dir(public)?;
        let pem = std::fs::read(&ensured.files.ca)
            .map_err(|err| tls_error(&ensured.files.ca, "cannot read", err))?;
        write_atomically(&public.join("ca.pem"), &pem, 0o644)?;
    }
    Ok((ensured, token))
}

/// `ghost tls init`'s answer: the CA (new or kept), the server certificate (issued now and
/// why, or kept) and the service credential's file.
pub fn init_report(ensured: &Ensured, token: &Path) -> String {
    format!(
        "{} CA {}{}\nserver certificate {} (key {}){}\nservice credential {}",
        if ensured.new_ca { "new" } else { "kept" },
        ensured.files.ca.display(),
        if ensured.new_ca {
            " (give it to executors: --ca)"
        } else {
            ""
        },
        ensured.files.cert.display(),
        ensured.files.key.display(),
        ensured
            .issued
            .as_ref()
            .map(|why| format!(", issued now: {why}"))
            .unwrap_or_else(|| ", kept".to_owned()),
        token.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn leaf_der(files: &TlsFiles) -> Vec<u8> {
        let pem = std::fs::read(&files.cert).unwrap();
        x509_parser::pem::parse_x509_pem(&pem).unwrap().1.contents
    }

    #[test]
    fn a_ca_and_a_server_certificate_are_made_once_with_private_keys_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        let names = names_for(
            &["10.1.2.3".parse().unwrap()],
            &["ghost.example".to_owned()],
        );
        let first = ensure(&tls, &names, now()).unwrap();
        assert!(first.new_ca);
        assert!(first.issued.is_some());
        for (path, mode) in [
            (&first.files.ca_key, 0o600),
            (&first.files.key, 0o600),
            (&first.files.ca, 0o644),
        ] {
            let got = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(got, mode, "{}", path.display());
        }
        assert_eq!(
            std::fs::metadata(&tls).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let der = leaf_der(&first.files);
        let (_, leaf) = x509_parser::parse_x509_certificate(&der).unwrap();
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        let text = format!("{:?}", san.value.general_names);
        for want in ["localhost", "ghost.example"] {
            assert!(text.contains(want), "{text}");
        }
        assert!(text.contains("[10, 1, 2, 3]"), "{text}");

        let again = ensure(&tls, &names, now()).unwrap();
        assert!(!again.new_ca);
        assert_eq!(again.issued, None);
        assert_eq!(leaf_der(&again.files), der, "kept, not issued again");
    }

    #[test]
    fn a_new_name_or_a_near_expiry_issues_again_from_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let names = names_for(&[], &[]);
        let first = ensure(dir.path(), &names, now()).unwrap();
        let ca = std::fs::read(&first.files.ca).unwrap();
        let before = leaf_der(&first.files);

        let more = names_for(&["192.0.2.7".parse().unwrap()], &[]);
        let second = ensure(dir.path(), &more, now()).unwrap();
        assert!(
            second.issued.as_deref().unwrap().contains("192.0.2.7"),
            "{second:?}"
        );
        assert_eq!(std::fs::read(&second.files.ca).unwrap(), ca, "same CA");
        assert_ne!(leaf_der(&second.files), before);

        let later = now() + SERVER_VALIDITY - Duration::days(10);
        let third = ensure(dir.path(), &more, later).unwrap();
        assert!(
            third.issued.as_deref().unwrap().contains("days left"),
            "{third:?}"
        );
    }

    #[test]
    fn a_certificate_from_another_ca_is_replaced_and_half_a_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let names = names_for(&[], &[]);
        let mine = ensure(dir.path(), &names, now()).unwrap();
        let theirs = ensure(other.path(), &names, now()).unwrap();
        std::fs::copy(&theirs.files.cert, &mine.files.cert).unwrap();
        let again = ensure(dir.path(), &names, now()).unwrap();
        assert_eq!(again.issued.as_deref(), Some("not issued by this CA"));

        std::fs::remove_file(&mine.files.ca_key).unwrap();
        let err = ensure(dir.path(), &names, now()).unwrap_err().to_string();
        assert!(err.contains("exists without its key"), "{err}");
    }

    #[test]
    fn a_key_that_does_not_match_its_certificate_is_issued_again() {
        let dir = tempfile::tempdir().unwrap();
        let names = names_for(&[], &[]);
        let first = ensure(dir.path(), &names, now()).unwrap();
        let other = KeyPair::generate().unwrap();
        std::fs::write(&first.files.key, other.serialize_pem()).unwrap();
        let again = ensure(dir.path(), &names, now()).unwrap();
        assert_eq!(again.issued.as_deref(), Some("its key does not match it"));
        assert_eq!(ensure(dir.path(), &names, now()).unwrap().issued, None);
    }

    #[test]
    fn the_ca_key_can_live_apart_and_the_ca_be_exported_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (tls, keys, public) = (
            dir.path().join("tls"),
            dir.path().join("ca"),
            dir.path().join("public"),
        );
        let (ensured, _) = init(&tls, &["router".to_owned()], Some(&keys), Some(&public)).unwrap();
        assert!(keys.join("ca-key.pem").is_file());
        assert!(!tls.join("ca-key.pem").exists());
        let listed: Vec<_> = std::fs::read_dir(&public)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(listed, ["ca.pem"]);
        assert_eq!(
            std::fs::read(public.join("ca.pem")).unwrap(),
            std::fs::read(&ensured.files.ca).unwrap()
        );
        let (again, _) = init(&tls, &["router".to_owned()], Some(&keys), Some(&public)).unwrap();
        assert!(!again.new_ca);
        assert_eq!(again.issued, None);
    }

    #[test]
    fn empty_or_odd_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", " ", "a b", "x/y"] {
            let err = init(dir.path(), &[bad.to_owned()], None, None)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("cannot be a certificate name"),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn init_writes_a_token_once() {
        let dir = tempfile::tempdir().unwrap();
        let (_, token) = init(dir.path(), &["router".to_owned()], None, None).unwrap();
        let first = std::fs::read_to_string(&token).unwrap();
        assert_eq!(first.trim().len(), 64);
        let (_, token) = init(dir.path(), &["router".to_owned()], None, None).unwrap();
        assert_eq!(std::fs::read_to_string(&token).unwrap(), first);
    }
}
