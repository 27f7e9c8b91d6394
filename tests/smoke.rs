mod common;
use common::server::{TestServer, post};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke() {
    let server = TestServer::start("smoke").await;
    let client = server.client(Some("client-a"));
    let body = r#"{"reqId":"a","reqTimeSec":"1573840000","cliIP":"1.2.3.4","statusCode":"200","reqHost":"h","reqMethod":"GET","reqPath":"/","country":"DE"}"#;
    let (status, answer) = post(&client, &server.url("edge_access"), "application/x-ndjson", None, body.as_bytes().to_vec()).await;
    println!("{status} {answer}");
    let rows = server.clickhouse.rows(&format!("SELECT * FROM {}.edge_access", server.clickhouse.database)).await;
    println!("{rows:?}");
    server.stop().await;
}
