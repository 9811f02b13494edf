//! TLS material for Redis connections: the CA and client-certificate files read and checked
//! (a bad file is a [`ConfigError`] naming its variable), and the rustls crypto provider.

use std::path::Path;

use redis::{ClientTlsConfig, TlsCertificates};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::RedisConfig;
use crate::error::ConfigError;

/// The certificates to hand to redis-rs, or `None` when the defaults do (no TLS, or TLS with
/// the system's roots and no client certificate).
pub(crate) fn certificates(cfg: &RedisConfig) -> Result<Option<TlsCertificates>, ConfigError> {
    let root_cert = cfg
        .tls_ca_file
        .as_deref()
        .map(|path| read_certs("REDIS_TLS_CA_FILE", path))
        .transpose()?;
    let client_tls = match (&cfg.tls_cert_file, &cfg.tls_key_file) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: read_certs("REDIS_TLS_CERT_FILE", cert)?,
            client_key: read_key("REDIS_TLS_KEY_FILE", key)?,
        }),
        _ => None,
    };
    Ok(
        (root_cert.is_some() || client_tls.is_some()).then_some(TlsCertificates {
            client_tls,
            root_cert,
        }),
    )
}

/// Makes *ring* the process's rustls crypto provider unless the application installed one.
/// rustls cannot pick one by itself when several are compiled in, and then panics.
pub(crate) fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may win the race; its provider is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

fn read(name: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| invalid(name, path, format!("cannot be read ({e})")))
}

fn read_certs(name: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    let pem = read(name, path)?;
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        cert.map_err(|e| invalid(name, path, format!("is not valid PEM ({e})")))?;
        count += 1;
    }
    if count == 0 {
        return Err(invalid(
            name,
            path,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(pem)
}

fn read_key(name: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    let pem = read(name, path)?;
    // The error names the problem, never the key's bytes.
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| invalid(name, path, format!("holds no usable PEM private key ({e})")))?;
    Ok(pem)
}

fn invalid(name: &'static str, path: &Path, reason: String) -> ConfigError {
    ConfigError::Invalid {
        name,
        value: path.display().to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, content: &[u8]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("cache-sdk-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    #[test]
    fn bad_files_name_their_variable() {
        let base = RedisConfig::url("rediss://127.0.0.1:6380");
        let missing = base.clone().with_tls_ca_file("/nonexistent/ca.pem");
        let err = certificates(&missing).unwrap_err().to_string();
        assert!(
            err.starts_with("REDIS_TLS_CA_FILE=\"/nonexistent/ca.pem\""),
            "{err}"
        );
        assert!(err.contains("cannot be read"), "{err}");

        let not_pem = temp("not.pem", b"hello");
        let err = certificates(&base.clone().with_tls_ca_file(&not_pem))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("REDIS_TLS_CA_FILE") && err.contains("no PEM certificate"),
            "{err}"
        );

        let broken = temp(
            "broken.pem",
            b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        );
        let err = certificates(&base.clone().with_tls_ca_file(&broken))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("REDIS_TLS_CA_FILE") && err.contains("not valid PEM"),
            "{err}"
        );

        let err = certificates(&base.clone().with_client_cert(&broken, &not_pem))
            .unwrap_err()
            .to_string();
        assert!(err.contains("REDIS_TLS_CERT_FILE"), "{err}");
    }

    #[test]
    fn no_files_means_the_defaults() {
        assert!(certificates(&RedisConfig::url("rediss://h:1"))
            .unwrap()
            .is_none());
    }
}
