//! PEM files → rustls configuration, always with the `ring` provider.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The crypto provider hookrelay uses everywhere.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes `ring` the process-wide default so no library picks another
/// provider. Harmless when called twice.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads every certificate of a PEM file, for a target's `ca_file`.
pub fn load_ca_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("{} is not valid PEM: {err}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no CERTIFICATE section", path.display()));
    }
    Ok(certs)
}

/// The TLS client configuration for outbound requests: the system's roots
/// plus `extra` (a target's private CA). ALPN is left to the connector.
pub fn client_config(extra: &[CertificateDer<'static>]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(native_roots().iter().cloned());
    roots.add_parsable_certificates(extra.iter().cloned());
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// The system's root certificates, read once per process.
fn native_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: std::sync::OnceLock<Vec<CertificateDer<'static>>> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        let native = rustls_native_certs::load_native_certs();
        for error in &native.errors {
            tracing::debug!(%error, "could not load a system root certificate");
        }
        native.certs
    })
}

/// A loaded server certificate and key, ready to accept connections.
#[derive(Clone)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub config: Arc<rustls::ServerConfig>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls").field("cert", &self.cert).field("key", &self.key).finish_non_exhaustive()
    }
}

/// Which file a TLS problem is in, so config errors can name the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsFile {
    Cert,
    Key,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TlsError {
    pub file: TlsFile,
    pub message: String,
}

impl ServerTls {
    /// Loads a PEM certificate chain and private key, serving HTTP/1.1 and h2
    /// by ALPN.
    pub fn load(cert: &Path, key: &Path) -> Result<ServerTls, TlsError> {
        let cert_err = |message: String| TlsError { file: TlsFile::Cert, message };
        let key_err = |message: String| TlsError { file: TlsFile::Key, message };
        let cert_pem =
            std::fs::read(cert).map_err(|err| cert_err(format!("cannot read {}: {err}", cert.display())))?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| cert_err(format!("{} is not valid PEM: {err}", cert.display())))?;
        if chain.is_empty() {
            return Err(cert_err(format!("{} holds no CERTIFICATE section", cert.display())));
        }
        let key_pem =
            std::fs::read(key).map_err(|err| key_err(format!("cannot read {}: {err}", key.display())))?;
        let private_key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|err| key_err(format!("{} holds no usable private key: {err}", key.display())))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|err| cert_err(format!("TLS setup failed: {err}")))?
            .with_no_client_auth()
            .with_single_cert(chain, private_key)
            .map_err(|err| key_err(format!("{} does not fit {}: {err}", key.display(), cert.display())))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ServerTls { cert: cert.to_owned(), key: key.to_owned(), config: Arc::new(config) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
        (cert, key)
    }

    #[test]
    fn loads_a_matching_pair_with_alpn() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "a");
        let tls = ServerTls::load(&cert, &key).unwrap();
        assert_eq!(tls.config.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert!(!format!("{tls:?}").contains("PRIVATE"));
    }

    #[test]
    fn a_key_from_another_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = write_pair(dir.path(), "a");
        let (_, other_key) = write_pair(dir.path(), "b");
        let err = ServerTls::load(&cert, &other_key).unwrap_err();
        assert_eq!(err.file, TlsFile::Key);
        assert!(err.message.contains("does not fit"), "{}", err.message);
    }

    #[test]
    fn a_file_without_a_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = write_pair(dir.path(), "a");
        let err = ServerTls::load(&cert, &cert).unwrap_err();
        assert_eq!(err.file, TlsFile::Key);
        assert!(err.message.contains("holds no usable private key"), "{}", err.message);
    }
}
