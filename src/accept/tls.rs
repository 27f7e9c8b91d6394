// placeholder until the TLS acceptor lands
use std::path::PathBuf;
use std::sync::Arc;
#[derive(Debug, Clone, serde::Deserialize)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}
impl TlsConfig {
    pub fn validate(&self, _p: &str) -> Result<(), String> {
        Ok(())
    }
}
#[derive(Debug, Clone)]
pub struct PeerIdentity {
    pub dns_names: Vec<String>,
    pub uris: Vec<String>,
    pub common_name: Option<String>,
}
pub fn server_config(_c: &TlsConfig) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    todo!()
}
pub async fn serve_tls(
    _l: tokio::net::TcpListener,
    _t: Arc<rustls::ServerConfig>,
    _a: axum::Router,
    _m: usize,
    _s: impl std::future::Future<Output = ()>,
) {
}
