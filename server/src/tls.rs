//! TLS for client connections (`--tls-cert` / `--tls-key`): a rustls acceptor handed to pgwire,
//! which answers a client's SSLRequest with 'S' and runs the handshake before the startup
//! message. Without it the server answers 'N' and clients that only prefer TLS go on in the
//! clear; clients that require it are refused by their own driver.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pgwire::tokio::TlsAcceptor;
use pgwire::tokio::tokio_rustls::rustls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why the TLS configuration cannot be used; said at startup, before anything listens.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS certificate chain {}: {source}", path.display())]
    Certificate { path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("the TLS certificate file {} holds no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("cannot read the TLS private key {}: {source} (PKCS#8, PKCS#1 or SEC1 PEM is expected)", path.display())]
    Key { path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("the TLS certificate and key cannot be used together: {0}")]
    Config(#[from] rustls::Error),
}

/// The acceptor for a PEM certificate chain (leaf first) and its private key.
///
/// # Errors
/// When a file cannot be read or parsed, or the key does not match the certificate.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let certificate_error = |source| TlsError::Certificate { path: cert.to_path_buf(), source };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(certificate_error)?
        .collect::<Result<_, _>>()
        .map_err(certificate_error)?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: cert.to_path_buf() });
    }
    let private_key =
        PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key { path: key.to_path_buf(), source })?;
    // The provider is named rather than taken from the process default, which would panic
    // if a second crypto backend ever got linked in.
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)?;
    // Postgres 17 clients name the protocol in ALPN; older ones send none, which is accepted.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_empty_files_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.pem");
        let err = acceptor(&missing, &missing).err().expect("no files");
        assert!(err.to_string().contains("nope.pem"), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let err = acceptor(&empty, &empty).err().expect("no certificate");
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
    }
}
