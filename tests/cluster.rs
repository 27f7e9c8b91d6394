//! Cluster mode: two ClickHouse 18.16 servers on loopback as the two shards of the cluster in
//! deploy/clickhouse/cluster/ (host names rewritten to 127.0.0.1 and the test's ports), local
//! tables on both, a Distributed table over them, and two sluice instances writing shard-aware.
//! Every row must land exactly once, on the shard its batch hashes to, and the Distributed
//! table must see them all.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::local_clickhouse::LocalClickHouse;
use common::server::config_text;
use sluice::config::{Config, ShardConfig};
use sluice::server::Server;
use sluice::sink::ShardMap;
use sluice_loadtest::generator::{self, Format, Generator};

const BATCHES_PER_INSTANCE: usize = 12;
const ROWS_PER_BATCH: usize = 40;

/// deploy/clickhouse/cluster/config.d/remote_servers.xml with each shard's host and native port
/// replaced by the test servers'.
fn cluster_config(shards: &[&LocalClickHouse]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/clickhouse/cluster/config.d/remote_servers.xml");
    let mut text = std::fs::read_to_string(path).unwrap();
    for (i, shard) in shards.iter().enumerate() {
        let host = format!("<host>clickhouse-shard-{}.clickhouse</host>", i + 1);
        let at = text
            .find(&host)
            .unwrap_or_else(|| panic!("{host} in the cluster config"));
        let port_at = at + text[at..].find("<port>9000</port>").expect("its <port>");
        text.replace_range(
            port_at..port_at + "<port>9000</port>".len(),
            &format!("<port>{}</port>", shard.tcp_port),
        );
        text = text.replacen(&host, "<host>127.0.0.1</host>", 1);
    }
    text
}

async fn count(server: &LocalClickHouse, sql: &str) -> u64 {
    let body = server.query(sql).await;
    body.trim()
        .parse()
        .unwrap_or_else(|_| panic!("a count from {sql:?}: {body:?}"))
}

/// (batch id → rows) on one server's table.
async fn rows_per_batch(
    server: &LocalClickHouse,
    table: &str,
    column: &str,
) -> BTreeMap<String, u64> {
    let body = server
        .query(&format!(
            "SELECT {column}, count() FROM {table} GROUP BY {column} FORMAT TabSeparated"
        ))
        .await;
    body.lines()
        .map(|line| {
            let (batch, rows) = line.split_once('\t').expect("two columns");
            (batch.to_string(), rows.parse().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sluice_instances_write_each_batch_once_to_its_shard() {
    let shard1 = LocalClickHouse::prepare("cluster-shard1");
    let shard2 = LocalClickHouse::prepare("cluster-shard2");
    let remote_servers = cluster_config(&[&shard1, &shard2]);
    for shard in [&shard1, &shard2] {
        shard.config_file("remote_servers.xml", &remote_servers);
        shard.start();
    }

    // The same database on both shards; sluice creates the local tables on every shard.
    let clickhouse = common::TestClickHouse::with_url(&shard1.url(), "cluster").await;
    let database = clickhouse.database.clone();
    shard2.query(&format!("CREATE DATABASE {database}")).await;
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    sluice::certs::write_dev_certs(&certs).unwrap();
    let text = config_text(&certs, &clickhouse, "");
    let mut config = Config::from_toml(&text).unwrap();
    config.clickhouse.shards = vec![
        ShardConfig {
            urls: vec![shard1.url()],
            weight: 1,
        },
        // A dead replica first: the shard's inserts fail over to the live one.
        ShardConfig {
            urls: vec!["http://127.0.0.1:1".to_string(), shard2.url()],
            weight: 1,
        },
    ];
    config.validate().unwrap();
    let instances = [
        Server::start(config.clone(), None)
            .await
            .expect("sluice 1 starts"),
        Server::start(config, None).await.expect("sluice 2 starts"),
    ];

    for shard in [&shard1, &shard2] {
        for table in ["edge_access", "edge_access_quarantine"] {
            shard
                .query(&format!(
                    "CREATE TABLE {database}.{table}_all AS {database}.{table} \
                     ENGINE = Distributed(sluice, {database}, {table}, rand())"
                ))
                .await;
        }
    }

    // Distinct batches from each instance, every one with its batch id; one row of each batch
    // lacks its required reqId and goes to quarantine, on the same shard as the batch's rows.
    // All batches at once: each instance accumulates them into a few inserts per shard.
    let mut requests = tokio::task::JoinSet::new();
    for (n, instance) in instances.iter().enumerate() {
        let base_url = format!("https://localhost:{}", instance.ingest_addr.port());
        let client = client(&certs);
        for b in 0..BATCHES_PER_INSTANCE {
            let batch_id = format!("sluice{n}-batch{b}");
            let rows = Generator::new((n * 1000 + b) as u64).edge_access(ROWS_PER_BATCH);
            let mut body = generator::encode_access(&rows, Format::Ndjson);
            body.extend_from_slice(b"{\"reqTimeSec\":\"1573840000\"}\n");
            let request = client
                .post(format!("{base_url}/v1/streams/edge_access"))
                .header("content-type", "application/x-ndjson")
                .header("x-sluice-batch-id", &batch_id)
                .body(body);
            requests.spawn(async move {
                let response = request.send().await.expect("sluice answers");
                let status = response.status().as_u16();
                (batch_id, status, response.text().await.unwrap())
            });
        }
    }
    let mut sent = BTreeMap::new();
    while let Some(answered) = requests.join_next().await {
        let (batch_id, status, text) = answered.unwrap();
        let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["accepted"], ROWS_PER_BATCH as u64, "{answer}");
        assert_eq!(answer["rejected"], 1, "{answer}");
        sent.insert(batch_id, ROWS_PER_BATCH as u64);
    }
    assert_eq!(sent.len(), 2 * BATCHES_PER_INSTANCE);

    // Each batch is on exactly one shard, the one its (principal, batch id) hashes to.
    let shard_map = ShardMap::weighted([1, 1]);
    let mut per_shard = Vec::new();
    for shard in [&shard1, &shard2] {
        let raw = rows_per_batch(shard, &format!("{database}.edge_access"), "_batch_id").await;
        let rejected = rows_per_batch(
            shard,
            &format!("{database}.edge_access_quarantine"),
            "batch_id",
        )
        .await;
        assert_eq!(
            raw.keys().collect::<BTreeSet<_>>(),
            rejected.keys().collect::<BTreeSet<_>>(),
            "a batch's rejected rows are on its shard"
        );
        assert!(rejected.values().all(|&n| n == 1), "{rejected:?}");
        per_shard.push(raw);
    }
    for (index, batches) in per_shard.iter().enumerate() {
        assert!(!batches.is_empty(), "shard {} got no batch", index + 1);
        for batch_id in batches.keys() {
            let key = ("edge-a".to_string(), batch_id.clone());
            assert_eq!(shard_map.shard_of(Some(&key)), index, "{batch_id}");
        }
    }
    let mut landed: BTreeMap<String, u64> = BTreeMap::new();
    for batches in &per_shard {
        for (batch_id, rows) in batches {
            assert!(
                landed.insert(batch_id.clone(), *rows).is_none(),
                "{batch_id} is on both shards"
            );
        }
    }
    assert_eq!(landed, sent, "every batch whole and once");

    // The Distributed table, from either node, sees every row once.
    let total = (2 * BATCHES_PER_INSTANCE * ROWS_PER_BATCH) as u64;
    for shard in [&shard1, &shard2] {
        let table = format!("{database}.edge_access_all");
        assert_eq!(
            count(shard, &format!("SELECT count() FROM {table}")).await,
            total
        );
        let distinct = format!("SELECT uniqExact(_batch_id, request_id) FROM {table}");
        assert_eq!(count(shard, &distinct).await, total, "no row twice");
        let quarantined = format!("SELECT count() FROM {database}.edge_access_quarantine_all");
        assert_eq!(count(shard, &quarantined).await, sent.len() as u64);
    }
    let local: u64 = per_shard.iter().flat_map(|b| b.values()).sum();
    assert_eq!(local, total, "the shards' counts sum to the total");

    for instance in instances {
        instance.shutdown().await.unwrap();
    }
}

fn client(certs: &Path) -> reqwest::Client {
    let tls = sluice::certs::client_config(
        &certs.join("ca.crt"),
        Some((&certs.join("client-a.crt"), &certs.join("client-a.key"))),
    )
    .unwrap();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .unwrap()
}
