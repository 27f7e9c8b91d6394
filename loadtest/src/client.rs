//! HTTP clients for posting to sluice: mTLS (rustls with the ring provider, never a process-wide
//! default) or plain HTTP.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Request timeout of the clients built here.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// A rustls client config trusting the CA certificates in `ca_pem`, presenting the certificate
/// chain `cert_pem` with its private key `key_pem` when both are given. ALPN offers HTTP/2 and
/// HTTP/1.1.
pub fn tls_config_from_pem(
    ca_pem: &[u8],
    identity: Option<(&[u8], &[u8])>,
) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let mut found = 0;
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(cert.context("CA certificate PEM")?)
            .context("CA certificate")?;
        found += 1;
    }
    if found == 0 {
        bail!("no CA certificate in the CA PEM");
    }
    let builder = rustls::ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .context("client certificate PEM")?;
            if chain.is_empty() {
                bail!("no certificate in the client certificate PEM");
            }
            let key = PrivateKeyDer::from_pem_slice(key_pem).context("client key PEM")?;
            builder
                .with_client_auth_cert(chain, key)
                .context("client certificate and key")?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// [`tls_config_from_pem`] from PEM files.
pub fn tls_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> anyhow::Result<rustls::ClientConfig> {
    let ca_pem = read(ca)?;
    match identity {
        Some((cert, key)) => {
            let (cert_pem, key_pem) = (read(cert)?, read(key)?);
            tls_config_from_pem(&ca_pem, Some((&cert_pem, &key_pem)))
                .with_context(|| format!("client identity {} / {}", cert.display(), key.display()))
        }
        None => tls_config_from_pem(&ca_pem, None),
    }
    .with_context(|| format!("TLS setup with CA {}", ca.display()))
}

/// A reqwest client using `config` for every TLS connection.
pub fn client_with_tls(config: rustls::ClientConfig) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("building the HTTP client")
}

/// A client that trusts only `ca` and authenticates with the client certificate `cert` and key
/// `key` (PEM files; the certificate file may hold a chain).
pub fn mtls_client(ca: &Path, cert: &Path, key: &Path) -> anyhow::Result<reqwest::Client> {
    client_with_tls(tls_config(ca, Some((cert, key)))?)
}

/// [`mtls_client`] from PEM bytes.
pub fn mtls_client_from_pem(
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
) -> anyhow::Result<reqwest::Client> {
    client_with_tls(tls_config_from_pem(ca_pem, Some((cert_pem, key_pem)))?)
}

/// A client for `http://` URLs. reqwest is built without a default crypto provider, so it still
/// gets a (ring, trust-nothing) TLS config: an `https://` URL fails the handshake instead of
/// panicking.
pub fn plain_client() -> anyhow::Result<reqwest::Client> {
    plain_client_builder()?
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("building the HTTP client")
}

/// The builder behind [`plain_client`], for callers that set their own timeouts and pool.
pub fn plain_client_builder() -> anyhow::Result<reqwest::ClientBuilder> {
    let config = rustls::ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    Ok(reqwest::Client::builder().use_preconfigured_tls(config))
}
