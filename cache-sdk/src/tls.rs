//! TLS material for Redis connections: the CA and client-certificate files read and checked
//! once, when the configuration is validated at build time (a bad file is a [`ConfigError`]
//! naming its variable), then handed to both links (the data link and the invalidation
//! link); and the rustls crypto provider.
//!
//! Without the `tls` feature (no rustls, no ring) the material is always empty: the
//! configuration's validation refuses every TLS setting with
//! [`ConfigError::FeatureDisabled`] before anything here runs.

use std::fmt;
use std::path::Path;

#[cfg(feature = "cluster")]
use redis::cluster::ClusterClientBuilder;
use redis::IntoConnectionInfo;
#[cfg(feature = "tls")]
use redis::{ClientTlsConfig, TlsCertificates};
#[cfg(feature = "tls")]
use rustls::pki_types::pem::PemObject;
#[cfg(feature = "tls")]
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::ConfigError;

/// The certificates read from the configured files, ready for redis-rs; empty when the
/// defaults do (no TLS, or TLS with the system's roots and no client certificate). Cheap to
/// clone; `Debug` shows which parts are present, never their bytes.
#[derive(Clone, Default)]
pub(crate) struct TlsMaterial {
    #[cfg(feature = "tls")]
    certs: Option<TlsCertificates>,
}

impl TlsMaterial {
    /// Without the `tls` feature: no material. Validation refuses TLS settings first; a file
    /// given anyway is refused the same way, naming the feature.
    #[cfg(not(feature = "tls"))]
    pub(crate) fn load(
        ca: Option<&Path>,
        client: Option<(&Path, &Path)>,
    ) -> Result<Self, ConfigError> {
        let name = match (ca, client) {
            (None, None) => return Ok(Self {}),
            (Some(_), _) => "REDIS_TLS_CA_FILE",
            (None, Some(_)) => "REDIS_TLS_CERT_FILE",
        };
        Err(ConfigError::FeatureDisabled {
            name,
            feature: "tls",
        })
    }

    /// Reads and checks the CA file (`REDIS_TLS_CA_FILE`) and the client certificate and
    /// key files (`REDIS_TLS_CERT_FILE`, `REDIS_TLS_KEY_FILE`); errors name the variable.
    #[cfg(feature = "tls")]
    pub(crate) fn load(
        ca: Option<&Path>,
        client: Option<(&Path, &Path)>,
    ) -> Result<Self, ConfigError> {
        let root_cert = ca
            .map(|path| read_certs("REDIS_TLS_CA_FILE", path))
            .transpose()?;
        let client_tls = match client {
            Some((cert, key)) => Some(ClientTlsConfig {
                client_cert: read_certs("REDIS_TLS_CERT_FILE", cert)?,
                client_key: read_key("REDIS_TLS_KEY_FILE", key)?,
            }),
            None => None,
        };
        let certs = (root_cert.is_some() || client_tls.is_some()).then_some(TlsCertificates {
            client_tls,
            root_cert,
        });
        Ok(Self { certs })
    }

    /// A client for `info` (a URL or connection info) with this material.
    pub(crate) fn client<T: IntoConnectionInfo>(
        &self,
        info: T,
    ) -> redis::RedisResult<redis::Client> {
        #[cfg(feature = "tls")]
        if let Some(certs) = &self.certs {
            return redis::Client::build_with_tls(info, certs.clone());
        }
        redis::Client::open(info)
    }

    /// A cluster client builder with this material.
    #[cfg(feature = "cluster")]
    pub(crate) fn cluster(&self, builder: ClusterClientBuilder) -> ClusterClientBuilder {
        #[cfg(feature = "tls")]
        if let Some(certs) = &self.certs {
            return builder.certs(certs.clone());
        }
        builder
    }
}

impl fmt::Debug for TlsMaterial {
    #[cfg(feature = "tls")]
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let certs = self.certs.as_ref();
        f.debug_struct("TlsMaterial")
            .field("ca", &certs.is_some_and(|c| c.root_cert.is_some()))
            .field(
                "client_cert",
                &certs.is_some_and(|c| c.client_tls.is_some()),
            )
            .finish()
    }

    #[cfg(not(feature = "tls"))]
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsMaterial(without the tls feature)")
    }
}

/// Without the `tls` feature there is no rustls to set up (and no TLS connection is made).
#[cfg(not(feature = "tls"))]
pub(crate) fn install_crypto_provider() {}

/// Makes *ring* the process's rustls crypto provider unless the application installed one.
/// rustls cannot pick one by itself when several are compiled in, and then panics.
#[cfg(feature = "tls")]
pub(crate) fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may win the race; its provider is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

#[cfg(feature = "tls")]
fn read(name: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| invalid(name, path, format!("cannot be read ({e})")))
}

#[cfg(feature = "tls")]
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

#[cfg(feature = "tls")]
fn read_key(name: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    let pem = read(name, path)?;
    // The error names the problem, never the key's bytes.
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| invalid(name, path, format!("holds no usable PEM private key ({e})")))?;
    Ok(pem)
}

#[cfg(feature = "tls")]
fn invalid(name: &'static str, path: &Path, reason: String) -> ConfigError {
    ConfigError::Invalid {
        name,
        value: path.display().to_string(),
        reason,
    }
}

#[cfg(test)]
#[cfg(feature = "tls")]
mod tests {
    use super::*;

    fn temp(name: &str, content: &[u8]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("cache-sdk-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    fn ca(path: &Path) -> Result<TlsMaterial, String> {
        TlsMaterial::load(Some(path), None).map_err(|e| e.to_string())
    }

    #[test]
    fn bad_files_name_their_variable() {
        let err = ca(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(
            err.starts_with("REDIS_TLS_CA_FILE=\"/nonexistent/ca.pem\""),
            "{err}"
        );
        assert!(err.contains("cannot be read"), "{err}");

        let not_pem = temp("not.pem", b"hello");
        let err = ca(&not_pem).unwrap_err();
        assert!(
            err.contains("REDIS_TLS_CA_FILE") && err.contains("no PEM certificate"),
            "{err}"
        );

        let broken = temp(
            "broken.pem",
            b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        );
        let err = ca(&broken).unwrap_err();
        assert!(
            err.contains("REDIS_TLS_CA_FILE") && err.contains("not valid PEM"),
            "{err}"
        );

        let err = TlsMaterial::load(None, Some((&broken, &not_pem)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("REDIS_TLS_CERT_FILE"), "{err}");
    }

    #[test]
    fn no_files_means_the_defaults() {
        let m = TlsMaterial::load(None, None).unwrap();
        assert!(m.certs.is_none());
        assert_eq!(
            format!("{m:?}"),
            "TlsMaterial { ca: false, client_cert: false }"
        );
        assert!(m.client("rediss://h:1").is_ok());
    }
}
