//! TLS for client connections (`--tls-cert`, `--tls-key`), on rustls with the ring backend.
//!
//! A client asking for TLS (`sslmode=require`) gets it when the server has a certificate;
//! without one the server answers `N` to the request and a `require` client gives up, as
//! with Postgres.

use std::path::Path;
use std::sync::Arc;

use pgwire::tokio::TlsAcceptor;
use pgwire::tokio::tokio_rustls::rustls;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why the certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS certificate {path}: {source}")]
    Certificate { path: String, source: rustls_pki_types::pem::Error },
    #[error("the TLS certificate file {0} holds no certificate")]
    NoCertificate(String),
    #[error("cannot read the TLS private key {path}: {source}")]
    Key { path: String, source: rustls_pki_types::pem::Error },
    #[error("the TLS certificate and key do not make a server configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// An acceptor serving the PEM certificate chain at `cert` with the PEM private key at `key`.
///
/// # Errors
/// When a file cannot be read or parsed, or the key does not fit the certificate.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Certificate { path: cert.display().to_string(), source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert.display().to_string()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|source| TlsError::Key { path: key.display().to_string(), source })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    // Postgres 17 clients offer ALPN "postgresql" and check the server agreed.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
