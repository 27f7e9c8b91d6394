//! TLS on the ingest listener: server configuration, client-certificate verification, the
//! identity a verified client certificate proves, and a connection loop that serves HTTP/1.1 and
//! HTTP/2 over it.
//!
//! A refused client certificate cannot be answered with an HTTP status (the handshake never
//! finished), so every refused handshake is logged and counted in
//! `sluice_tls_handshake_failures_total{reason}` with one of the few reasons
//! [`handshake_failure_reason`] returns.
//!
//! Everything here uses the ring provider explicitly; nothing depends on a process-wide default
//! provider being installed.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::{ServerConnection, VerifierBuilderError, WebPkiClientVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::conn::ConnectionLimits;

/// ALPN protocols the server offers, most preferred first.
const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// TLS settings of a listener (`[ingest.tls]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Server certificate chain file (PEM): the server's certificate first, then any
    /// intermediates. Read once at start-up.
    pub cert: PathBuf,
    /// Private key file (PEM: PKCS#8, PKCS#1 or SEC1) of the first certificate in `cert`.
    pub key: PathBuf,
    /// CA certificate file (PEM, one or more certificates) that client certificates must chain
    /// to. Required when `client_auth` is `"required"` or `"optional"`; must be absent when it is
    /// `"none"`.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Whether clients must present a certificate (default `"required"`). See [`ClientAuth`].
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Certificate revocation lists (PEM `X509 CRL` files, one or more CRLs each) that client
    /// certificates are checked against. With any CRL configured, every certificate of a
    /// client's chain below the root must be covered by a CRL of its issuer, or the client is
    /// refused (reason `revocation_unknown`). Empty (default): no revocation check. Only with
    /// `client_auth` `"required"` or `"optional"`.
    #[serde(default)]
    pub client_crls: Vec<PathBuf>,
}

/// Whether the server asks for a client certificate, and what happens without one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// `"required"`: a client without a certificate that chains to `client_ca` is refused
    /// during the handshake.
    #[default]
    Required,
    /// `"optional"`: a client may connect without a certificate (it must then authenticate
    /// some other way); a certificate it does present must still chain to `client_ca`.
    Optional,
    /// `"none"`: no client certificate is requested.
    None,
}

impl ClientAuth {
    /// The value as written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::Required => "required",
            ClientAuth::Optional => "optional",
            ClientAuth::None => "none",
        }
    }
}

impl TlsConfig {
    /// Checks that the settings fit together; the error names the offending key, prefixed with
    /// `key_prefix` (for example `ingest.tls`).
    pub fn validate(&self, key_prefix: &str) -> Result<(), String> {
        match (self.client_auth, &self.client_ca) {
            (ClientAuth::Required | ClientAuth::Optional, None) => Err(format!(
                "{key_prefix}.client_ca: required when client_auth = \"{}\"",
                self.client_auth.as_str()
            )),
            // A CA file with verification switched off is almost certainly a mistake that
            // would silently drop client authentication, so it is refused rather than ignored.
            (ClientAuth::None, Some(_)) => Err(format!(
                "{key_prefix}.client_ca: set, but client_auth = \"none\" never asks for a client \
                 certificate; remove it or set client_auth to \"required\" or \"optional\""
            )),
            (ClientAuth::None, None) if !self.client_crls.is_empty() => Err(format!(
                "{key_prefix}.client_crls: set, but client_auth = \"none\" never asks for a \
                 client certificate"
            )),
            _ => Ok(()),
        }
    }

    /// Every file this configuration reads, for watching (see [`crate::reload`]).
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.cert.clone(), self.key.clone()];
        files.extend(self.client_ca.iter().cloned());
        files.extend(self.client_crls.iter().cloned());
        files
    }
}

/// Why a TLS server configuration could not be built. Every message names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {source}", path.display())]
    ReadPem {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{}: no PEM certificate found", path.display())]
    NoCertificate { path: PathBuf },
    #[error(
        "{}: no PEM private key found (expected PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)",
        path.display()
    )]
    NoPrivateKey { path: PathBuf },
    #[error("client_ca: required when client_auth = \"{}\"", mode.as_str())]
    MissingClientCa { mode: ClientAuth },
    #[error("{}: not a usable CA certificate: {source}", path.display())]
    BadClientCa {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("{}: cannot verify client certificates with this CA: {source}", path.display())]
    ClientVerifier {
        path: PathBuf,
        source: VerifierBuilderError,
    },
    #[error("{}: no PEM certificate revocation list (X509 CRL) found", path.display())]
    NoCrl { path: PathBuf },
    #[error("{}: not a usable certificate revocation list: {source}", path.display())]
    BadCrl {
        path: PathBuf,
        source: VerifierBuilderError,
    },
    #[error("{} with key {}: {source}", cert.display(), key.display())]
    CertificateAndKey {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("TLS protocol versions not supported by the ring provider: {0}")]
    ProtocolVersions(rustls::Error),
}

/// Builds the rustls server configuration: certificate chain and key from `cfg`, client
/// certificates verified against `client_ca` as `client_auth` says, ALPN `h2` then `http/1.1`.
pub fn server_config(cfg: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = read_certificates(&cfg.cert)?;
    let key = read_private_key(&cfg.key)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .map_err(TlsError::ProtocolVersions)?;
    let builder = match (cfg.client_auth, &cfg.client_ca) {
        (ClientAuth::None, _) => builder.with_no_client_auth(),
        (mode, None) => return Err(TlsError::MissingClientCa { mode }),
        (mode, Some(ca_path)) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in read_certificates(ca_path)? {
                roots.add(ca).map_err(|source| TlsError::BadClientCa {
                    path: ca_path.clone(),
                    source,
                })?;
            }
            let roots = Arc::new(roots);
            let mut crls = Vec::new();
            for crl_path in &cfg.client_crls {
                let file_crls = read_crls(crl_path)?;
                // Parsed one file at a time, so that a bad one is named.
                WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                    .with_crls(file_crls.iter().cloned())
                    .build()
                    .map_err(|source| TlsError::BadCrl {
                        path: crl_path.clone(),
                        source,
                    })?;
                crls.extend(file_crls);
            }
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(roots, provider).with_crls(crls);
            if mode == ClientAuth::Optional {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier
                .build()
                .map_err(|source| TlsError::ClientVerifier {
                    path: ca_path.clone(),
                    source,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config =
        builder
            .with_single_cert(chain, key)
            .map_err(|source| TlsError::CertificateAndKey {
                cert: cfg.cert.clone(),
                key: cfg.key.clone(),
                source,
            })?;
    config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_error = |source| TlsError::ReadPem {
        path: path.to_owned(),
        source,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(read_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_error)?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certificates)
}

fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let read_error = |source| TlsError::ReadPem {
        path: path.to_owned(),
        source,
    };
    let crls = CertificateRevocationListDer::pem_file_iter(path)
        .map_err(read_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_error)?;
    if crls.is_empty() {
        return Err(TlsError::NoCrl {
            path: path.to_owned(),
        });
    }
    Ok(crls)
}

fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| match source {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: path.to_owned(),
        },
        source => TlsError::ReadPem {
            path: path.to_owned(),
            source,
        },
    })
}

/// What the client's verified certificate says about it: the names the auth stage maps to a
/// principal. `None` wherever a connection has no client certificate (`client_auth` optional or
/// none). A certificate only reaches here after it chained to `client_ca`, so these names are
/// vouched for by that CA.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// DNS names of the subjectAltName extension, in certificate order
    /// (e.g. `edge-a.sluice.local`).
    pub dns_names: Vec<String>,
    /// URIs of the subjectAltName extension, in certificate order
    /// (e.g. `spiffe://sluice.local/edge/a`).
    pub uris: Vec<String>,
    /// The subject's common name (the last CN when there are several); `None` when the subject
    /// has none or it is not a string type.
    pub common_name: Option<String>,
}

/// The identity of the client certificate of a finished handshake, if the client presented one.
pub fn peer_identity(conn: &ServerConnection) -> Option<PeerIdentity> {
    let end_entity = conn.peer_certificates()?.first()?;
    Some(identity_of_certificate(end_entity))
}

/// Reads the names out of a DER certificate. rustls has already parsed and verified it, so a
/// failure here is unexpected: it is logged and yields an identity with no names, which no
/// principal matches.
fn identity_of_certificate(der: &[u8]) -> PeerIdentity {
    let certificate = match X509Certificate::from_der(der) {
        Ok((_, certificate)) => certificate,
        Err(err) => {
            tracing::warn!(error = %err, "verified client certificate does not parse");
            return PeerIdentity::default();
        }
    };
    let mut identity = PeerIdentity {
        common_name: certificate
            .subject()
            .iter_common_name()
            .last()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned),
        ..PeerIdentity::default()
    };
    match certificate.subject_alternative_name() {
        Ok(Some(san)) => {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => identity.dns_names.push((*dns).to_owned()),
                    GeneralName::URI(uri) => identity.uris.push((*uri).to_owned()),
                    _ => {}
                }
            }
        }
        Ok(None) => {}
        Err(err) => {
            tracing::warn!(error = %err, "client certificate has an unreadable subjectAltName");
        }
    }
    identity
}

/// A refused or failed TLS handshake. `Display` is only the short [`reason`](Self::reason) (fit
/// for a metric label); the underlying error is the [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct HandshakeError {
    /// One of the few values [`handshake_failure_reason`] returns.
    pub reason: &'static str,
    /// What rustls or the socket said.
    #[source]
    pub source: io::Error,
}

impl HandshakeError {
    fn from_io(source: io::Error) -> HandshakeError {
        HandshakeError {
            reason: handshake_failure_reason(&source),
            source,
        }
    }

    /// The error for a handshake that did not finish in time (reason `timeout`), for accept
    /// loops that bound [`accept_tls`] themselves.
    pub fn timed_out() -> HandshakeError {
        HandshakeError::from_io(io::Error::new(
            io::ErrorKind::TimedOut,
            "tls handshake did not finish in time",
        ))
    }
}

/// Classifies a failed server handshake into a short, fixed reason:
///
/// | reason | meaning |
/// |---|---|
/// | `no_certificate` | client auth required, the client sent no certificate |
/// | `unknown_ca` | the client certificate does not chain to `client_ca` |
/// | `expired` / `not_yet_valid` | the client certificate is outside its validity window |
/// | `revoked` | a configured CRL lists the client certificate (or a CA of its chain) |
/// | `revocation_unknown` | CRLs are configured, but none from the issuer of a certificate of the chain |
/// | `bad_certificate` | any other certificate problem (wrong key usage, bad signature, …) |
/// | `peer_alert` | the client aborted with an alert, usually because it does not trust our certificate |
/// | `protocol` | not TLS, or no common version, cipher suite or ALPN protocol |
/// | `timeout` | the handshake took longer than `limits.tls_handshake_timeout_secs` |
/// | `closed` | the client closed or reset the connection mid-handshake (also TCP health checks) |
/// | `other` | anything else |
pub fn handshake_failure_reason(err: &io::Error) -> &'static str {
    if let Some(tls_error) = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return rustls_failure_reason(tls_error);
    }
    match err.kind() {
        io::ErrorKind::TimedOut => "timeout",
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => "closed",
        _ => "other",
    }
}

fn rustls_failure_reason(err: &rustls::Error) -> &'static str {
    use rustls::CertificateError as Cert;
    use rustls::Error as Tls;
    match err {
        Tls::NoCertificatesPresented => "no_certificate",
        Tls::InvalidCertificate(Cert::UnknownIssuer) => "unknown_ca",
        Tls::InvalidCertificate(Cert::Expired | Cert::ExpiredContext { .. }) => "expired",
        Tls::InvalidCertificate(Cert::NotValidYet | Cert::NotValidYetContext { .. }) => {
            "not_yet_valid"
        }
        Tls::InvalidCertificate(Cert::Revoked) => "revoked",
        Tls::InvalidCertificate(Cert::UnknownRevocationStatus) => "revocation_unknown",
        Tls::InvalidCertificate(_) => "bad_certificate",
        Tls::AlertReceived(_) => "peer_alert",
        Tls::InappropriateMessage { .. }
        | Tls::InappropriateHandshakeMessage { .. }
        | Tls::InvalidMessage(_)
        | Tls::PeerIncompatible(_)
        | Tls::PeerMisbehaved(_)
        | Tls::PeerSentOversizedRecord
        | Tls::NoApplicationProtocol
        | Tls::DecryptError => "protocol",
        _ => "other",
    }
}

/// Runs the server side of a TLS handshake on `io` and returns the stream with the identity of
/// the client certificate, if any. No timeout: the caller bounds the time
/// (`limits.tls_handshake_timeout_secs`).
pub async fn accept_tls<IO>(
    acceptor: &TlsAcceptor,
    io: IO,
) -> Result<(TlsStream<IO>, Option<PeerIdentity>), HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let stream = acceptor.accept(io).await.map_err(HandshakeError::from_io)?;
    let identity = peer_identity(stream.get_ref().1);
    Ok((stream, identity))
}

/// The server configuration in force, swapped whole by a reload (see [`crate::reload`]).
pub type SharedServerConfig = Arc<ArcSwap<ServerConfig>>;

/// Serves `app` over TLS on `listener` until `shutdown` completes, within `limits` (see
/// [`super::conn`]).
///
/// - Refused handshakes are logged and counted in `sluice_tls_handshake_failures_total{reason}`.
/// - Every request carries an `Option<Arc<PeerIdentity>>` extension (`None`: no client
///   certificate); read it with `Extension<Option<Arc<PeerIdentity>>>`. A request without the
///   extension did not come through this loop.
/// - HTTP/1.1 and HTTP/2 (by ALPN or preface).
/// - On `shutdown`: stop accepting, abandon handshakes in progress, let open connections finish
///   their requests (HTTP/2 GOAWAY, HTTP/1.1 close after the current response), and return once
///   every connection is closed. Bound the drain by wrapping the call in a timeout if needed.
pub async fn serve_tls(
    listener: TcpListener,
    tls: SharedServerConfig,
    app: axum::Router,
    limits: &ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    super::conn::serve_connections(listener, Some(tls), app, limits, shutdown).await;
}

pub(super) fn record_refused_handshake(err: &HandshakeError, remote: SocketAddr) {
    metrics::counter!("sluice_tls_handshake_failures_total", "reason" => err.reason).increment(1);
    match err.reason {
        // Scanners, health checks and impatient clients: not worth an operator's attention.
        "closed" | "timeout" | "protocol" | "other" => {
            tracing::debug!(%remote, reason = err.reason, error = %err.source, "tls handshake failed");
        }
        _ => {
            tracing::warn!(%remote, reason = err.reason, error = %err.source, "tls handshake refused");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{self, DevCertPaths};
    use axum::Extension;
    use axum::routing::get;
    use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
    use std::time::Duration;
    use std::time::Instant;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

    /// A running `serve_tls` on 127.0.0.1 with the dev certificates.
    struct TestServer {
        addr: SocketAddr,
        certs: DevCertPaths,
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<()>,
        _dir: tempfile::TempDir,
    }

    /// Answers with the first DNS SAN of the client certificate, or `anonymous`.
    async fn whoami(Extension(identity): Extension<Option<Arc<PeerIdentity>>>) -> String {
        match identity {
            Some(identity) => identity.dns_names.first().cloned().unwrap_or_default(),
            None => "anonymous".to_owned(),
        }
    }

    fn dev_config(certs: &DevCertPaths, client_auth: ClientAuth) -> TlsConfig {
        TlsConfig {
            cert: certs.server.cert.clone(),
            key: certs.server.key.clone(),
            client_ca: (client_auth != ClientAuth::None).then(|| certs.ca.cert.clone()),
            client_auth,
            client_crls: Vec::new(),
        }
    }

    async fn start(client_auth: ClientAuth, max_connections: usize) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let certs = certs::write_dev_certs(dir.path()).unwrap();
        let tls = server_config(&dev_config(&certs, client_auth)).unwrap();
        start_with(tls, certs, dir, max_connections, TLS_HANDSHAKE_TIMEOUT).await
    }

    async fn start_with(
        tls: Arc<ServerConfig>,
        certs: DevCertPaths,
        dir: tempfile::TempDir,
        max_connections: usize,
        handshake_timeout: Duration,
    ) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/whoami", get(whoami));
        let (stop, stopped) = oneshot::channel::<()>();
        let limits = ConnectionLimits {
            max_connections,
            tls_handshake_timeout: handshake_timeout,
            ..ConnectionLimits::default()
        };
        let task = tokio::spawn(async move {
            serve_tls(listener, Arc::new(ArcSwap::new(tls)), app, &limits, async {
                let _ = stopped.await;
            })
            .await
        });
        TestServer {
            addr,
            certs,
            stop: Some(stop),
            task,
            _dir: dir,
        }
    }

    impl TestServer {
        /// A client that trusts the dev CA and presents `cert` (a dev cert pair) if given.
        fn client(&self, cert: Option<&certs::CertKeyPaths>) -> reqwest::Client {
            let tls = certs::client_config(
                &self.certs.ca.cert,
                cert.map(|pair| (pair.cert.as_path(), pair.key.as_path())),
            )
            .unwrap();
            client_with(tls, self.addr)
        }

        fn url(&self) -> String {
            // Resolved to `addr` by the client: exercises the server's DNS SAN.
            format!("https://sluice.local:{}/whoami", self.addr.port())
        }

        async fn shutdown(mut self) {
            self.stop.take().unwrap().send(()).unwrap();
            tokio::time::timeout(Duration::from_secs(5), self.task)
                .await
                .expect("serve_tls drains and returns after shutdown")
                .unwrap();
        }
    }

    fn client_with(tls: rustls::ClientConfig, addr: SocketAddr) -> reqwest::Client {
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .resolve("sluice.local", addr)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    /// A recorder for this test's thread only (`#[tokio::test]` runs every task on it).
    fn local_recorder() -> PrometheusRecorder {
        PrometheusBuilder::new().build_recorder()
    }

    /// Waits (the server counts just after it sends its alert) until the failure counter for
    /// `reason` reaches 1.
    async fn assert_failure_counted(recorder: &PrometheusRecorder, reason: &str) {
        let wanted = format!("sluice_tls_handshake_failures_total{{reason=\"{reason}\"}} 1");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let rendered = recorder.handle().render();
            if rendered.lines().any(|line| line == wanted) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "expected `{wanted}` in:\n{rendered}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The request must fail below HTTP, with the server's TLS alert: no status. (With TLS 1.3
    /// the client finishes its side of the handshake before the server has judged its
    /// certificate, so the alert arrives while the request is being sent.)
    fn assert_refused_with_alert(
        result: Result<reqwest::Response, reqwest::Error>,
        expected: rustls::AlertDescription,
    ) {
        let err = match result {
            Ok(response) => panic!("expected a TLS alert, got HTTP {}", response.status()),
            Err(err) => err,
        };
        assert!(err.status().is_none(), "{err:?}");
        // reqwest's TLS glue passes the rustls error on as text inside an `io::Error`.
        let alert = rustls::Error::AlertReceived(expected).to_string();
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        while let Some(current) = cause {
            if let Some(io_error) = current.downcast_ref::<io::Error>() {
                assert_eq!(io_error.to_string(), alert, "{err:?}");
                return;
            }
            cause = current.source();
        }
        panic!("no TLS alert in the error chain: {err:?}");
    }

    #[tokio::test]
    async fn required_mode_identifies_each_client_by_its_certificate() {
        let server = start(ClientAuth::Required, 64).await;

        let response = server
            .client(Some(&server.certs.client_a))
            .get(server.url())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        assert_eq!(response.text().await.unwrap(), "edge-a.sluice.local");

        let response = server
            .client(Some(&server.certs.client_b))
            .get(server.url())
            .send()
            .await
            .unwrap();
        assert_eq!(response.text().await.unwrap(), "edge-b.sluice.local");

        // HTTP/1.1 when the client offers only that.
        let mut http11 = certs::client_config(
            &server.certs.ca.cert,
            Some((&server.certs.client_a.cert, &server.certs.client_a.key)),
        )
        .unwrap();
        http11.alpn_protocols = vec![b"http/1.1".to_vec()];
        let response = client_with(http11, server.addr)
            .get(server.url())
            .send()
            .await
            .unwrap();
        assert_eq!(response.version(), reqwest::Version::HTTP_11);
        assert_eq!(response.text().await.unwrap(), "edge-a.sluice.local");

        server.shutdown().await;
    }

    #[tokio::test]
    async fn required_mode_refuses_a_client_without_a_certificate() {
        let recorder = local_recorder();
        let _local = metrics::set_default_local_recorder(&recorder);
        let server = start(ClientAuth::Required, 64).await;

        assert_refused_with_alert(
            server.client(None).get(server.url()).send().await,
            rustls::AlertDescription::CertificateRequired,
        );
        assert_failure_counted(&recorder, "no_certificate").await;
        server.shutdown().await;
    }

    #[tokio::test]
    async fn a_client_certificate_from_another_ca_is_refused_as_unknown_ca() {
        let recorder = local_recorder();
        let _local = metrics::set_default_local_recorder(&recorder);
        let server = start(ClientAuth::Required, 64).await;

        let client = server.client(Some(&server.certs.client_untrusted));
        assert_refused_with_alert(
            client.get(server.url()).send().await,
            rustls::AlertDescription::UnknownCA,
        );
        assert_failure_counted(&recorder, "unknown_ca").await;
        server.shutdown().await;
    }

    #[tokio::test]
    async fn optional_mode_serves_anonymous_clients_but_still_verifies_certificates() {
        let recorder = local_recorder();
        let _local = metrics::set_default_local_recorder(&recorder);
        let server = start(ClientAuth::Optional, 64).await;

        let response = server.client(None).get(server.url()).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "anonymous");

        let response = server
            .client(Some(&server.certs.client_a))
            .get(server.url())
            .send()
            .await
            .unwrap();
        assert_eq!(response.text().await.unwrap(), "edge-a.sluice.local");

        let client = server.client(Some(&server.certs.client_untrusted));
        assert_refused_with_alert(
            client.get(server.url()).send().await,
            rustls::AlertDescription::UnknownCA,
        );
        assert_failure_counted(&recorder, "unknown_ca").await;
        server.shutdown().await;
    }

    #[tokio::test]
    async fn none_mode_does_not_ask_for_a_certificate() {
        let server = start(ClientAuth::None, 64).await;
        // Even a client holding a trusted certificate is not asked for it.
        let response = server
            .client(Some(&server.certs.client_a))
            .get(server.url())
            .send()
            .await
            .unwrap();
        assert_eq!(response.text().await.unwrap(), "anonymous");
        server.shutdown().await;
    }

    #[tokio::test]
    async fn an_expired_client_certificate_is_refused_as_expired() {
        let recorder = local_recorder();
        let _local = metrics::set_default_local_recorder(&recorder);
        let dir = tempfile::tempdir().unwrap();
        let dev = certs::write_dev_certs(dir.path()).unwrap();

        // A second CA the server trusts for clients, and an expired client signed by it.
        let client_ca = certs::DevCa::generate("expired test CA").unwrap();
        let expired = client_ca
            .issue_with_validity(
                &certs::edge_client_spec("old"),
                chrono::NaiveDate::from_ymd_opt(2020, 1, 1).unwrap(),
                chrono::NaiveDate::from_ymd_opt(2021, 1, 1).unwrap(),
            )
            .unwrap();
        let client_ca_path = dir.path().join("expired-test-ca.crt");
        let expired_cert = dir.path().join("old.crt");
        let expired_key = dir.path().join("old.key");
        std::fs::write(&client_ca_path, client_ca.cert_pem()).unwrap();
        std::fs::write(&expired_cert, &expired.cert_pem).unwrap();
        std::fs::write(&expired_key, &expired.key_pem).unwrap();

        let tls = server_config(&TlsConfig {
            cert: dev.server.cert.clone(),
            key: dev.server.key.clone(),
            client_ca: Some(client_ca_path),
            client_auth: ClientAuth::Required,
            client_crls: Vec::new(),
        })
        .unwrap();
        let client_tls =
            certs::client_config(&dev.ca.cert, Some((&expired_cert, &expired_key))).unwrap();
        let server = start_with(tls, dev, dir, 64, TLS_HANDSHAKE_TIMEOUT).await;

        let result = client_with(client_tls, server.addr)
            .get(server.url())
            .send()
            .await;
        assert_refused_with_alert(result, rustls::AlertDescription::CertificateExpired);
        assert_failure_counted(&recorder, "expired").await;
        server.shutdown().await;
    }

    #[tokio::test]
    async fn a_revoked_client_certificate_is_refused_as_revoked() {
        let recorder = local_recorder();
        let _local = metrics::set_default_local_recorder(&recorder);
        let dir = tempfile::tempdir().unwrap();
        let dev = certs::write_dev_certs(dir.path()).unwrap();
        let tls = server_config(&TlsConfig {
            client_crls: vec![dev.crl.clone()],
            ..dev_config(&dev, ClientAuth::Required)
        })
        .unwrap();
        let server = start_with(tls, dev, dir, 64, TLS_HANDSHAKE_TIMEOUT).await;

        let response = server
            .client(Some(&server.certs.client_a))
            .get(server.url())
            .send()
            .await
            .unwrap();
        assert_eq!(response.text().await.unwrap(), "edge-a.sluice.local");
        let client = server.client(Some(&server.certs.client_revoked));
        assert_refused_with_alert(
            client.get(server.url()).send().await,
            rustls::AlertDescription::CertificateRevoked,
        );
        assert_failure_counted(&recorder, "revoked").await;
        server.shutdown().await;
    }

    #[tokio::test]
    async fn with_crls_a_client_whose_issuer_has_none_is_refused() {
        let recorder = local_recorder();
        let _local = metrics::set_default_local_recorder(&recorder);
        let dir = tempfile::tempdir().unwrap();
        let dev = certs::write_dev_certs(dir.path()).unwrap();
        // Both CAs are trusted, only the other one's (empty) CRL is configured.
        let other = certs::DevCa::generate("another CA").unwrap();
        let other_crl = dir.path().join("other.crl");
        std::fs::write(&other_crl, other.revocation_list(&[]).unwrap()).unwrap();
        let both = dir.path().join("both-cas.crt");
        std::fs::write(
            &both,
            std::fs::read_to_string(&dev.ca.cert).unwrap() + other.cert_pem(),
        )
        .unwrap();
        let tls = server_config(&TlsConfig {
            client_ca: Some(both),
            client_crls: vec![other_crl],
            ..dev_config(&dev, ClientAuth::Required)
        })
        .unwrap();
        let server = start_with(tls, dev, dir, 64, TLS_HANDSHAKE_TIMEOUT).await;
        let client = server.client(Some(&server.certs.client_a));
        assert_refused_with_alert(
            client.get(server.url()).send().await,
            rustls::AlertDescription::UnknownCA,
        );
        assert_failure_counted(&recorder, "revocation_unknown").await;
        server.shutdown().await;
    }

    #[tokio::test]
    async fn at_the_connection_limit_new_clients_wait_for_a_free_slot() {
        let server = start(ClientAuth::Required, 1).await;
        let first = server.client(Some(&server.certs.client_a));
        // The pooled HTTP/2 connection stays open after the answer and holds the only slot.
        let response = first.get(server.url()).send().await.unwrap();
        assert_eq!(response.text().await.unwrap(), "edge-a.sluice.local");

        let second = server.client(Some(&server.certs.client_b));
        let url = server.url();
        let waiting = tokio::spawn(async move { second.get(url).send().await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !waiting.is_finished(),
            "second connection was served over the limit"
        );

        drop(first); // closes the first connection, freeing its slot
        let response = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("second client is served once the slot frees")
            .unwrap()
            .unwrap();
        assert_eq!(response.text().await.unwrap(), "edge-b.sluice.local");
        server.shutdown().await;
    }

    #[tokio::test]
    async fn shutdown_closes_idle_connections_and_stops_accepting() {
        let server = start(ClientAuth::Required, 64).await;
        let client = server.client(Some(&server.certs.client_a));
        // Leaves an idle keep-alive connection open, which shutdown must close.
        let response = client.get(server.url()).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let addr = server.addr;
        server.shutdown().await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_the_handshake_times_out() {
        let recorder = local_recorder();
        let _local = metrics::set_default_local_recorder(&recorder);
        let dir = tempfile::tempdir().unwrap();
        let dev = certs::write_dev_certs(dir.path()).unwrap();
        let tls = server_config(&dev_config(&dev, ClientAuth::Required)).unwrap();
        let timeout = Duration::from_millis(200);
        let server = start_with(tls, dev, dir, 64, timeout).await;

        let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 64];
        let read = tokio::io::AsyncReadExt::read(&mut silent, &mut buf).await;
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "server closes the connection"
        );
        assert!(started.elapsed() >= timeout);
        assert_failure_counted(&recorder, "timeout").await;
        server.shutdown().await;
    }

    #[tokio::test]
    async fn shutdown_abandons_handshakes_in_progress() {
        // Shutdown must not wait TLS_HANDSHAKE_TIMEOUT for a client that never speaks.
        let server = start(ClientAuth::Required, 64).await;
        let _silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        server.shutdown().await;
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn handshake_failures_are_classified_into_few_reasons() {
        use rustls::{AlertDescription, CertificateError};
        let tls = |err: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, err);
        let cases = [
            (
                tls(rustls::Error::NoCertificatesPresented),
                "no_certificate",
            ),
            (
                tls(rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer,
                )),
                "unknown_ca",
            ),
            (
                tls(rustls::Error::InvalidCertificate(CertificateError::Expired)),
                "expired",
            ),
            (
                tls(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidYet,
                )),
                "not_yet_valid",
            ),
            (
                tls(rustls::Error::InvalidCertificate(
                    CertificateError::BadSignature,
                )),
                "bad_certificate",
            ),
            (
                tls(rustls::Error::AlertReceived(AlertDescription::UnknownCA)),
                "peer_alert",
            ),
            (tls(rustls::Error::NoApplicationProtocol), "protocol"),
            (tls(rustls::Error::General("x".into())), "other"),
            (HandshakeError::timed_out().source, "timeout"),
            (io::Error::from(io::ErrorKind::UnexpectedEof), "closed"),
            (io::Error::from(io::ErrorKind::ConnectionReset), "closed"),
            (io::Error::other("something"), "other"),
        ];
        for (err, reason) in cases {
            assert_eq!(handshake_failure_reason(&err), reason, "{err:?}");
            assert_eq!(HandshakeError::from_io(err).to_string(), reason);
        }
    }

    #[tokio::test]
    async fn accept_tls_returns_the_reason_and_the_identity() {
        let dir = tempfile::tempdir().unwrap();
        let dev = certs::write_dev_certs(dir.path()).unwrap();
        let acceptor =
            TlsAcceptor::from(server_config(&dev_config(&dev, ClientAuth::Required)).unwrap());
        let handshake = |cert: Option<&certs::CertKeyPaths>| {
            let client = tokio_rustls::TlsConnector::from(Arc::new(
                certs::client_config(
                    &dev.ca.cert,
                    cert.map(|pair| (pair.cert.as_path(), pair.key.as_path())),
                )
                .unwrap(),
            ));
            let acceptor = acceptor.clone();
            async move {
                let (client_io, server_io) = tokio::io::duplex(64 * 1024);
                let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
                let (server, _client) = tokio::join!(accept_tls(&acceptor, server_io), async {
                    // Drive the client until the server has decided; keep the stream so
                    // the server sees no EOF first.
                    client.connect(name, client_io).await
                });
                server.map(|(_stream, identity)| identity)
            }
        };

        let identity = handshake(Some(&dev.client_b)).await.unwrap().unwrap();
        assert_eq!(
            identity,
            PeerIdentity {
                dns_names: vec!["edge-b.sluice.local".to_owned()],
                uris: vec!["spiffe://sluice.local/edge/b".to_owned()],
                common_name: Some("edge-b".to_owned()),
            }
        );
        let refused = handshake(Some(&dev.client_untrusted)).await.unwrap_err();
        assert_eq!(refused.reason, "unknown_ca");
        assert_eq!(refused.to_string(), "unknown_ca");
        let refused = handshake(None).await.unwrap_err();
        assert_eq!(refused.reason, "no_certificate");
    }

    #[test]
    fn config_reads_lowercase_modes_defaults_to_required_and_rejects_unknown_keys() {
        let config: TlsConfig =
            toml::from_str("cert = \"s.crt\"\nkey = \"s.key\"\nclient_ca = \"ca.crt\"\n").unwrap();
        assert_eq!(config.client_auth, ClientAuth::Required);
        assert_eq!(config.validate("ingest.tls"), Ok(()));
        for (text, mode) in [
            ("required", ClientAuth::Required),
            ("optional", ClientAuth::Optional),
            ("none", ClientAuth::None),
        ] {
            let config: TlsConfig = toml::from_str(&format!(
                "cert = \"s.crt\"\nkey = \"s.key\"\nclient_auth = \"{text}\"\n"
            ))
            .unwrap();
            assert_eq!(config.client_auth, mode);
        }
        let err = toml::from_str::<TlsConfig>("cert = \"a\"\nkey = \"b\"\nclient_auth = \"Yes\"\n")
            .unwrap_err();
        assert!(err.to_string().contains("client_auth"), "{err}");
        let err =
            toml::from_str::<TlsConfig>("cert = \"a\"\nkey = \"b\"\nca = \"c\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `ca`"), "{err}");
    }

    #[test]
    fn validate_names_the_key() {
        let mut config = TlsConfig {
            cert: "s.crt".into(),
            key: "s.key".into(),
            client_ca: None,
            client_auth: ClientAuth::Required,
            client_crls: Vec::new(),
        };
        assert_eq!(
            config.validate("ingest.tls").unwrap_err(),
            "ingest.tls.client_ca: required when client_auth = \"required\""
        );
        config.client_auth = ClientAuth::Optional;
        assert_eq!(
            config.validate("ingest.tls").unwrap_err(),
            "ingest.tls.client_ca: required when client_auth = \"optional\""
        );
        config.client_auth = ClientAuth::None;
        assert_eq!(config.validate("ingest.tls"), Ok(()));
        config.client_crls = vec!["ca.crl".into()];
        assert_eq!(
            config.validate("ingest.tls").unwrap_err(),
            "ingest.tls.client_crls: set, but client_auth = \"none\" never asks for a client \
             certificate"
        );
        config.client_crls.clear();
        config.client_ca = Some("ca.crt".into());
        assert!(
            config
                .validate("ingest.tls")
                .unwrap_err()
                .starts_with("ingest.tls.client_ca: set, but client_auth = \"none\"")
        );
    }

    #[test]
    fn server_config_errors_name_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let dev = certs::write_dev_certs(dir.path()).unwrap();
        let good = dev_config(&dev, ClientAuth::Required);
        let message = |config: &TlsConfig| server_config(config).unwrap_err().to_string();

        let missing = dir.path().join("missing.crt");
        let msg = message(&TlsConfig {
            cert: missing.clone(),
            ..good.clone()
        });
        assert!(msg.starts_with(&missing.display().to_string()), "{msg}");

        // A key file holding only a certificate.
        let msg = message(&TlsConfig {
            key: dev.server.cert.clone(),
            ..good.clone()
        });
        assert!(
            msg.contains("server.crt: no PEM private key found"),
            "{msg}"
        );

        // A CA file holding only a key.
        let msg = message(&TlsConfig {
            client_ca: Some(dev.ca.key.clone()),
            ..good.clone()
        });
        assert!(msg.contains("ca.key: no PEM certificate found"), "{msg}");

        // Key of another certificate.
        let msg = message(&TlsConfig {
            key: dev.client_a.key.clone(),
            ..good.clone()
        });
        assert!(
            msg.contains("server.crt with key") && msg.contains("client-a.key"),
            "{msg}"
        );

        // A CRL file holding a certificate, and one whose CRL does not parse.
        let msg = message(&TlsConfig {
            client_crls: vec![dev.ca.cert.clone()],
            ..good.clone()
        });
        assert!(
            msg.contains("ca.crt: no PEM certificate revocation list (X509 CRL) found"),
            "{msg}"
        );
        let garbled = dir.path().join("garbled.crl");
        std::fs::write(
            &garbled,
            "-----BEGIN X509 CRL-----\nMAMCAQA=\n-----END X509 CRL-----\n",
        )
        .unwrap();
        let msg = message(&TlsConfig {
            client_crls: vec![dev.crl.clone(), garbled],
            ..good.clone()
        });
        assert!(
            msg.contains("garbled.crl: not a usable certificate revocation list"),
            "{msg}"
        );
        server_config(&TlsConfig {
            client_crls: vec![dev.crl.clone()],
            ..good.clone()
        })
        .unwrap();

        let msg = message(&TlsConfig {
            client_ca: None,
            ..good.clone()
        });
        assert_eq!(msg, "client_ca: required when client_auth = \"required\"");

        let config = server_config(&good).unwrap();
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }
}
