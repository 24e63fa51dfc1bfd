//! A private CA and server certificates for tests, made with rcgen.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SerialNumber, date_time_ymd,
};

/// A CA that signs server certificates.
pub struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("ca key");
        let cert = params.self_signed(&key).expect("ca cert");
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `localhost` and 127.0.0.1 with `serial`, valid now (or expired).
    pub fn server(&self, serial: u64, expired: bool) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("leaf params");
        params.serial_number = Some(SerialNumber::from(serial));
        params
            .distinguished_name
            .push(DnType::CommonName, format!("server {serial}"));
        if expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        Leaf {
            pem: cert.pem(),
            der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A server certificate and its key.
pub struct Leaf {
    pub pem: String,
    pub der: Vec<u8>,
    pub key_pem: String,
}

impl Leaf {
    /// Writes `server.pem` and `server-key.pem` under `dir`; returns their paths.
    pub fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let cert = dir.join("server.pem");
        let key = dir.join("server-key.pem");
        // Replaced by rename, as cert-manager and `ghost` do, so a reader never sees half a file.
        for (path, text) in [(&cert, &self.pem), (&key, &self.key_pem)] {
            let staged = path.with_extension("tmp");
            std::fs::write(&staged, text).expect("write pem");
            std::fs::rename(&staged, path).expect("rename pem");
        }
        (cert, key)
    }
}
