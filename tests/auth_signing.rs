//! Signed batches end to end: the README's shell (openssl + curl) and JavaScript (Web Crypto,
//! run under Node) signing examples are accepted by a real server; a signed batch id cannot be
//! reused with another body and a replayed request stores nothing.

mod common;

use std::process::Command;

use common::auth::{Credentials, now, records, signed_headers};
use common::server::TestServer;
use serde_json::json;
use sluice::accept::tls::ClientAuth;

/// The code block that follows `<!-- tested: NAME -->` in the README.
fn readme_block(name: &str) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let marker = format!("<!-- tested: {name} -->");
    let after = &readme[readme.find(&marker).expect("marker in README") + marker.len()..];
    let start = after.find("```").unwrap();
    let body = &after[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    body[..body.find("\n```").unwrap()].to_string()
}

async fn signing_server(name: &str) -> (TestServer, Credentials, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let creds = Credentials::write(dir.path());
    let server = TestServer::start_with(name, &creds.config(), |config| {
        config.ingest.tls.as_mut().unwrap().client_auth = ClientAuth::Optional;
    })
    .await;
    (server, creds, dir)
}

async fn run(mut command: Command) -> String {
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{:?}: {stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_shell_signing_example_is_accepted() {
    let (server, creds, dir) = signing_server("sign_shell").await;
    let body = dir.path().join("batch.ndjson");
    std::fs::write(&body, records(0..3)).unwrap();
    let mut command = Command::new("bash");
    command
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(readme_block("sign.sh"))
        .env("SLUICE_URL", &server.base_url)
        .env("STREAM", "edge_access")
        .env("KEY_ID", "ew-2026")
        .env("KEY_FILE", creds.dir.join("ew-signing"))
        .env("BODY", &body)
        .env(
            "CURL_OPTS",
            format!("--cacert {}", server.certs.join("ca.crt").display()),
        );
    let answer: serde_json::Value = serde_json::from_str(&run(command).await).unwrap();
    assert_eq!(answer["accepted"], 3, "{answer}");
    let rows = server
        .clickhouse
        .rows(&format!(
            "SELECT _principal, _origin, _batch_id, count() AS n FROM {}.edge_access \
             GROUP BY _principal, _origin, _batch_id",
            server.clickhouse.database
        ))
        .await;
    assert_eq!(
        rows,
        [json!({"_principal": "ew", "_origin": "ew-1", "_batch_id": answer["batch_id"], "n": "3"})]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_javascript_signing_example_is_accepted() {
    let (server, creds, dir) = signing_server("sign_js").await;
    let script = dir.path().join("send.mjs");
    let harness = r#"
const body = new TextEncoder().encode(process.env.BODY_TEXT);
const path = '/v1/streams/edge_access';
const headers = await signBatch(path, process.env.KEY_ID, process.env.KEY, body);
const response = await fetch(process.env.SLUICE_URL + path, {
  method: 'POST', body, headers: { ...headers, 'Content-Type': 'application/x-ndjson' } });
console.log(JSON.stringify({ status: response.status, answer: await response.json() }));
"#;
    std::fs::write(&script, format!("{}\n{harness}", readme_block("sign.js"))).unwrap();
    let mut command = Command::new("node");
    command
        .arg(&script)
        .env("SLUICE_URL", &server.base_url)
        .env("KEY_ID", "ew-2026")
        .env("KEY", creds.secret("ew-signing"))
        .env(
            "BODY_TEXT",
            String::from_utf8(records(0..2)).unwrap() + "\n",
        )
        .env("NODE_EXTRA_CA_CERTS", server.certs.join("ca.crt"));
    let out: serde_json::Value = serde_json::from_str(&run(command).await).unwrap();
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(out["answer"]["accepted"], 2, "{out}");
    assert_eq!(server.clickhouse.count("edge_access").await, 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_batch_id_cannot_be_reused_with_another_body_and_a_replay_stores_nothing() {
    let (server, creds, _dir) = signing_server("sign_replay").await;
    let key = creds.secret("ew-signing");
    let path = "/v1/streams/edge_access";
    let client = server.client(None);
    let send = |headers: Vec<(&'static str, String)>, body: Vec<u8>| {
        let request = headers
            .into_iter()
            .fold(client.post(server.url("edge_access")), |r, (k, v)| {
                r.header(k, v)
            })
            .body(body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let answer: serde_json::Value =
                serde_json::from_str(&response.text().await.unwrap()).unwrap();
            (status, answer)
        }
    };
    let first = records(0..2);
    let headers = signed_headers("ew-2026", &key, path, now(), "b-7", &first);
    let (status, answer) = send(headers.clone(), first.clone()).await;
    assert_eq!(status, 200, "{answer}");
    // The captured request, replayed as is.
    let (status, answer) = send(headers, first).await;
    assert_eq!(
        (status, &answer["duplicate"]),
        (200, &json!(true)),
        "{answer}"
    );
    // The key holder signs another body under the same batch id.
    let other = records(5..8);
    let headers = signed_headers("ew-2026", &key, path, now(), "b-7", &other);
    let (status, answer) = send(headers, other).await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(
        answer["message"],
        "batch id \"b-7\" was already stored with other content"
    );
    // A signature without a batch id cannot be checked.
    let body = records(0..1);
    let mut headers = signed_headers("ew-2026", &key, path, now(), "x", &body);
    headers.retain(|(name, _)| *name != "x-sluice-batch-id");
    let (status, answer) = send(headers, body).await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["message"], "a signed batch needs x-sluice-batch-id");
    assert_eq!(server.clickhouse.count("edge_access").await, 2);
    server.stop().await;
}
