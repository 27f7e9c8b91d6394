//! The sender against a tiny in-process HTTP/1.1 server (plain and mTLS): headers, batching,
//! determinism under concurrency, answer parsing, failure accounting, and the CLI.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sluice_loadtest::generator::{
    Encoding, Format, Generator, GeneratorConfig, encode_access, encode_events,
};
use sluice_loadtest::send::{SendOptions, Stream, send};
use sluice_loadtest::{client, mtls_client_from_pem, plain_client};

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    batch_id: String,
    content_type: String,
    content_encoding: String,
    /// Decompressed body.
    body: Vec<u8>,
    client_cert: bool,
}

#[derive(Clone, Default)]
struct Server {
    seen: Arc<Mutex<Vec<Seen>>>,
    requests: Arc<AtomicUsize>,
    /// Answer 503 to every n-th request.
    fail_every: Option<usize>,
}

fn records(format: &str, body: &[u8]) -> usize {
    let text = std::str::from_utf8(body).unwrap();
    let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
    match format {
        "application/json" => serde_json::from_str::<Vec<serde_json::Value>>(text)
            .unwrap()
            .len(),
        "text/csv" => lines - 1,
        _ => lines,
    }
}

impl Server {
    /// Serves HTTP/1.1 requests on one connection until EOF.
    fn serve(&self, stream: impl Read + Write, client_cert: bool) {
        let mut reader = BufReader::new(stream);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 {
                    return;
                }
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                let (name, value) = h.split_once(':').unwrap();
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
            let header = |name: &str| {
                headers
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            let length: usize = header("content-length").parse().unwrap();
            let mut raw = vec![0; length];
            reader.read_exact(&mut raw).unwrap();
            let body = match header("content-encoding").as_str() {
                "gzip" => {
                    let mut out = Vec::new();
                    flate2::read::GzDecoder::new(&raw[..])
                        .read_to_end(&mut out)
                        .unwrap();
                    out
                }
                "zstd" => zstd::decode_all(&raw[..]).unwrap(),
                _ => raw,
            };
            let seen = Seen {
                batch_id: header("x-sluice-batch-id"),
                content_type: header("content-type"),
                content_encoding: header("content-encoding"),
                body,
                client_cert,
            };
            let n = records(&seen.content_type, &seen.body);
            let count = self.requests.fetch_add(1, Ordering::SeqCst) + 1;
            let (status, answer) = match self.fail_every {
                Some(every) if count.is_multiple_of(every) => (
                    "503 Service Unavailable",
                    r#"{"code":"overloaded","message":"spool full"}"#.to_string(),
                ),
                _ => (
                    "200 OK",
                    format!(
                        r#"{{"accepted":{},"rejected":1,"batch_id":"{}","errors":[{{"line":1,"field":"x","reason":"test"}}]}}"#,
                        n - 1,
                        seen.batch_id
                    ),
                ),
            };
            self.seen.lock().unwrap().push(seen);
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                answer.len()
            );
            if reader.get_mut().write_all(response.as_bytes()).is_err() {
                return;
            }
            let _ = reader.get_mut().flush();
        }
    }

    fn start_plain(&self) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = self.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let server = server.clone();
                std::thread::spawn(move || server.serve(conn.unwrap(), false));
            }
        });
        addr
    }

    fn start_tls(&self, config: Arc<rustls::ServerConfig>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = self.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let (server, config) = (server.clone(), config.clone());
                std::thread::spawn(move || {
                    let mut tcp = conn.unwrap();
                    let mut tls = rustls::ServerConnection::new(config).unwrap();
                    while tls.is_handshaking() {
                        if tls.complete_io(&mut tcp).is_err() {
                            return; // e.g. no client certificate
                        }
                    }
                    let client_cert = tls.peer_certificates().is_some_and(|c| !c.is_empty());
                    server.serve(rustls::StreamOwned::new(tls, tcp), client_cert);
                });
            }
        });
        addr
    }

    fn seen_sorted(&self) -> Vec<Seen> {
        let mut seen = self.seen.lock().unwrap().clone();
        seen.sort_by(|a, b| a.batch_id.cmp(&b.batch_id));
        seen
    }
}

fn options(url: String, stream: Stream) -> SendOptions {
    SendOptions {
        batch_id_prefix: "test".into(),
        ..SendOptions::new(url, stream)
    }
}

#[tokio::test]
async fn batches_are_deterministic_under_concurrency_and_counted() {
    let server = Server::default();
    let addr = server.start_plain();
    let mut opts = options(
        format!("http://{addr}/v1/streams/edge_access"),
        Stream::EdgeAccess,
    );
    opts.rows = 1050;
    opts.batch_rows = 100;
    opts.concurrency = 3;
    opts.seed = 42;
    let report = send(&plain_client().unwrap(), &opts).await.unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(report.batches, 11);
    assert_eq!(report.rows_sent, 1050);
    assert_eq!(report.statuses.get(&200), Some(&11));
    // The test server accepts all but one row of each batch.
    assert_eq!(report.rows_accepted, 1050 - 11);
    assert_eq!(report.rows_rejected, 11);
    assert!(report.first_errors[0].contains("rows rejected"), "{report}");

    let seen = server.seen_sorted();
    let mut generator = Generator::with_config(42, GeneratorConfig::default());
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s.batch_id, format!("test-{i:06}"));
        assert_eq!(s.content_type, "application/x-ndjson");
        assert_eq!(s.content_encoding, "gzip");
        let rows = if i == 10 { 50 } else { 100 };
        let expected = encode_access(&generator.edge_access(rows), Format::Ndjson);
        assert_eq!(s.body, expected, "batch {i}");
    }
}

#[tokio::test]
async fn every_format_and_encoding_has_its_headers() {
    let server = Server::default();
    let addr = server.start_plain();
    let client = plain_client().unwrap();
    for stream in [Stream::EdgeAccess, Stream::EdgeEvents] {
        for format in Format::ALL {
            for encoding in Encoding::ALL {
                let mut opts = options(
                    format!("http://{addr}/v1/streams/{}", stream.as_str()),
                    stream,
                );
                opts.rows = 30;
                opts.batch_rows = 30;
                opts.format = format;
                opts.encoding = encoding;
                opts.batch_id_prefix = format!(
                    "{}-{}-{}",
                    stream.as_str(),
                    format.as_str(),
                    encoding.content_encoding()
                );
                let report = send(&client, &opts).await.unwrap();
                assert!(report.ok(), "{report}");
                assert_eq!(report.rows_accepted, 29);
            }
        }
    }
    let seen = server.seen_sorted();
    assert_eq!(seen.len(), 2 * 4 * 3);
    for s in &seen {
        let format = Format::ALL
            .into_iter()
            .find(|f| s.batch_id.contains(&format!("-{}-", f.as_str())))
            .unwrap();
        assert_eq!(s.content_type, format.content_type(), "{}", s.batch_id);
        assert!(s.batch_id.contains(&format!("-{}-", s.content_encoding)));
        let expected = if s.batch_id.starts_with("edge_access") {
            encode_access(&Generator::new(1).edge_access(30), format)
        } else {
            encode_events(&Generator::new(1).edge_events(30), format)
        };
        assert_eq!(s.body, expected, "{}", s.batch_id);
    }
}

#[tokio::test]
async fn failed_batches_make_the_run_fail() {
    let server = Server {
        fail_every: Some(3),
        ..Server::default()
    };
    let addr = server.start_plain();
    let mut opts = options(
        format!("http://{addr}/v1/streams/edge_access"),
        Stream::EdgeAccess,
    );
    opts.rows = 600;
    opts.batch_rows = 100;
    let report = send(&plain_client().unwrap(), &opts).await.unwrap();
    assert!(!report.ok());
    assert_eq!(report.failed_batches, 2);
    assert_eq!(report.statuses.get(&503), Some(&2));
    assert_eq!(report.statuses.get(&200), Some(&4));
    assert!(
        report
            .first_errors
            .iter()
            .any(|e| e.contains("overloaded: spool full")),
        "{report}"
    );

    // Nothing listening: transport errors.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    opts.url = format!("http://{closed}/v1/streams/edge_access");
    let report = send(&plain_client().unwrap(), &opts).await.unwrap();
    assert_eq!(report.transport_errors, 6);
    assert_eq!(report.failed_batches, 6);
}

struct Pki {
    ca_pem: String,
    server: Arc<rustls::ServerConfig>,
    client_cert_pem: String,
    client_key_pem: String,
}

fn pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.distinguished_name
        .push(DnType::CommonName, "loadtest test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);

    let server_key = KeyPair::generate().unwrap();
    let mut server = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server.signed_by(&server_key, &issuer).unwrap();

    let client_key = KeyPair::generate().unwrap();
    let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
    client
        .distinguished_name
        .push(DnType::CommonName, "client-a");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client.signed_by(&client_key, &issuer).unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(server_cert.pem().as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(server_key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Pki {
        ca_pem: ca_cert.pem(),
        server: Arc::new(config),
        client_cert_pem: client_cert.pem(),
        client_key_pem: client_key.serialize_pem(),
    }
}

#[tokio::test]
async fn mtls_client_presents_its_certificate() {
    let pki = pki();
    let server = Server::default();
    let addr = server.start_tls(pki.server.clone());
    let url = format!("https://{addr}/v1/streams/edge_events");
    let mut opts = options(url.clone(), Stream::from_url(&url).unwrap());
    opts.rows = 300;
    opts.batch_rows = 100;
    opts.format = Format::Csv;
    opts.encoding = Encoding::Zstd;
    let client = mtls_client_from_pem(
        pki.ca_pem.as_bytes(),
        pki.client_cert_pem.as_bytes(),
        pki.client_key_pem.as_bytes(),
    )
    .unwrap();
    let report = send(&client, &opts).await.unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(report.rows_accepted, 300 - 3);
    let seen = server.seen_sorted();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter()
            .all(|s| s.client_cert && s.content_type == "text/csv")
    );

    // Same CA, no client certificate: the handshake is refused.
    let no_cert =
        client::client_with_tls(client::tls_config_from_pem(pki.ca_pem.as_bytes(), None).unwrap())
            .unwrap();
    let report = send(&no_cert, &opts).await.unwrap();
    assert_eq!(report.transport_errors, 3, "{report}");
    assert!(!report.ok());
}

#[test]
fn cli_send_reports_and_sets_the_exit_code() {
    let bin = env!("CARGO_BIN_EXE_sluice-loadtest");
    let good = Server::default();
    let addr = good.start_plain();
    let out = std::process::Command::new(bin)
        .args([
            "send",
            "--plain-http",
            "--rows",
            "250",
            "--batch-rows",
            "100",
        ])
        .args([
            "--format",
            "delimited",
            "--encoding",
            "identity",
            "--start",
            "1767225600",
        ])
        .args(["--url", &format!("http://{addr}/v1/streams/edge_access")])
        .args(["-H", "Authorization: Bearer t0ken"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("HTTP 200: 3"), "{stdout}");
    assert!(
        stdout.contains("rows accepted: 247, rejected: 3"),
        "{stdout}"
    );
    assert!(stdout.contains("rows/s"), "{stdout}");
    let seen = good.seen_sorted();
    assert_eq!(seen.len(), 3);
    assert_eq!(
        seen[0].body,
        encode_access(&Generator::new(1).edge_access(100), Format::Delimited)
    );

    let bad = Server {
        fail_every: Some(1),
        ..Server::default()
    };
    let addr = bad.start_plain();
    let out = std::process::Command::new(bin)
        .args(["send", "--plain-http", "--rows", "10"])
        .args(["--url", &format!("http://{addr}/v1/streams/edge_events")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(bad.seen_sorted()[0].body.starts_with(b"{\"id\":"));

    // https without --ca is a usage error, not a run.
    let out = std::process::Command::new(bin)
        .args([
            "send",
            "--url",
            "https://127.0.0.1:1/v1/streams/edge_access",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
