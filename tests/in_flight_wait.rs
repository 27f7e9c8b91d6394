//! A validated batch that finds the in-flight room taken waits for it instead of a 503, and the
//! waits are counted (`sluice_in_flight_wait_seconds`). A file of its own: the test installs
//! the process's metrics recorder.

mod common;

use std::time::{Duration, Instant};

use sluice_loadtest::generator::{self, Format, Generator};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validated_batch_waits_for_room_instead_of_a_503() {
    // Room for one batch at a time (a batch larger than the bound passes alone): batches sent
    // at once find the room free before they are decoded (5,000 rows take milliseconds to
    // validate, so all have arrived before the first takes the room), and all but one find it
    // taken once they are validated. Each waits for the one before it to reach ClickHouse.
    // The only test of this binary, whose recorder it installs: the waits it counts are its own
    // (in a binary with other in-process servers, theirs would count too).
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .unwrap();
    let server = common::server::TestServer::start_with_metrics(
        "room_wait",
        "",
        |config| {
            config.ingest.ack = sluice::config::AckMode::Memory;
            config.limits.max_in_flight_bytes = 1024;
            config.limits.overload_wait_ms = 20_000;
            config.batch.max_age_ms = 20;
        },
        Some(recorder.clone()),
    )
    .await;
    let client = server.client(Some("client-a"));
    let url = server.url("edge_access");
    // Every body is made before the first is sent, so that they are sent at once.
    let bodies: Vec<_> = (0..4)
        .map(|seed| {
            generator::encode_access(&Generator::new(seed).edge_access(5_000), Format::Ndjson)
        })
        .collect();
    let posts: Vec<_> = bodies
        .into_iter()
        .map(|body| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                common::server::post(&client, &url, "application/x-ndjson", None, body).await
            })
        })
        .collect();
    for post in posts {
        let (status, answer) = post.await.unwrap();
        assert_eq!(
            (status, answer["accepted"].as_u64()),
            (200, Some(5_000)),
            "{answer}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.clickhouse.count("edge_access").await < 20_000 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.clickhouse.count("edge_access").await, 20_000);
    // Three of the four waited for room, each once or twice (on arrival, once validated):
    // `sluice_in_flight_wait_seconds` counts every wait.
    let rendered = recorder.render();
    let waits = |at: &str| -> u64 {
        rendered
            .lines()
            .filter(|line| {
                line.starts_with("sluice_in_flight_wait_seconds_count")
                    && line.contains(&format!("at=\"{at}\""))
            })
            .map(|line| line.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    assert!(
        (3..=6).contains(&(waits("arrival") + waits("validated"))),
        "{rendered}"
    );
}
