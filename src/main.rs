//! The `sluice` command: parses arguments, loads and validates config, starts the stages and
//! waits for shutdown.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use sluice::check;
use sluice::config::Config;
use sluice::schema::SchemaSet;
use sluice::schema::ddl::{self, ServerVersion};
use sluice::server::Server;
use sluice::sink::clickhouse as ch;

/// mimalloc: batches are allocated on the decode threads and freed on others. With the purge
/// setting below it kept sluice at about 250 MiB peak RSS in the headline load test; glibc's
/// malloc had reached 456 MiB there (with the older 1 GiB in-flight bound, so not all of it
/// was the allocator's).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc 3's `mimalloc.h` (libmimalloc-sys names no constant for
/// it; the test below checks that the index still holds its default, 1000 ms).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How often the purger thread hands freed pages back to the OS.
const PURGE_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

/// Freed pages go back to the OS every 20 ms, from a thread of their own at a low priority.
/// mimalloc purges from whichever thread allocates once a purge is due; batches are
/// allocated by the request threads and freed by the accumulators, so with a purge delay alone
/// the pages of an insert's rows (64 MiB) were handed back by the next request to allocate:
/// 5–11 ms of `madvise` inside a validation that takes 2–3 ms, about once per insert (32 of
/// 4,440 requests in a paced load test; none with the purger). The purger forces the purge,
/// and mimalloc's own delay stays at its default 1 s, which the purger always beats (a request
/// thread purges only when the purger has not run for a second). How often to purge was
/// measured with the delay alone: with 1 s a thread that goes idle after a batch keeps its
/// pages until it allocates again, ~300 MiB RSS after a burst and ~390 MiB peak RSS under load;
/// purging at once (0 ms) kept the peak near 210 MiB but spent ~6 % of sluice's CPU faulting
/// the same pages back in; in one load test each, 20 ms gave 190k events per CPU-second at
/// 232 MiB peak RSS against 179k at 212 MiB, and 50 ms 204k at 251 MiB. mimalloc's own
/// `MIMALLOC_PURGE_DELAY` (milliseconds), when set, wins: then there is no purger.
fn start_purger() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    let purger = std::thread::Builder::new()
        .name("mem-purge".to_string())
        .spawn(|| {
            sluice::pipeline::yield_to_requests();
            // `mi_collect` works through the calling thread's heap and returns at once, arenas
            // unpurged, on a thread that has none yet.
            // SAFETY: initializes this thread's mimalloc state; a no-op when already done.
            unsafe { libmimalloc_sys::mi_thread_init() };
            loop {
                std::thread::sleep(PURGE_EVERY);
                // SAFETY: mimalloc's collection is safe from any thread at any time.
                unsafe { libmimalloc_sys::mi_collect(true) };
            }
        });
    if purger.is_err() {
        // SAFETY: sets a plain integer option, which mimalloc reads atomically.
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_EVERY.as_millis() as _)
        };
    }
}

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Edge telemetry into ClickHouse, over mTLS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the ingest service.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
        /// Log as JSON lines (the same as `log.format = "json"`).
        #[arg(long)]
        log_json: bool,
    },
    /// One report on the config, schemas, certificates (expiry), ClickHouse and table drift;
    /// exits 1 on warnings, 2 on errors.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Schema tools.
    Schema {
        #[command(subcommand)]
        command: SchemaCommand,
    },
    /// Certificate tools.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
}

#[derive(Subcommand)]
enum SchemaCommand {
    /// Prints CREATE DATABASE/TABLE statements for the schemas.
    Ddl {
        /// Directory of schema files.
        #[arg(long, default_value = "schemas")]
        schemas: PathBuf,
        /// Database name.
        #[arg(long, default_value = "sluice")]
        database: String,
        /// ClickHouse version to write DDL for, e.g. 18.16 or 24.8.
        #[arg(long, conflicts_with = "config")]
        server_version: Option<String>,
        /// Ask the ClickHouse of this config for its version (and use its database).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Creates the database and tables on the configured ClickHouse (admin credentials).
    Apply {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Prints CREATE ROLE / GRANT statements for servers with SQL access control (admin,
    /// writer, analyst); 18.16 uses deploy/clickhouse/users.d/sluice.xml instead.
    Roles {
        /// Database name.
        #[arg(long, default_value = "sluice")]
        database: String,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Writes a development CA, a server certificate and two client certificates.
    Dev {
        #[arg(long, default_value = ".local/certs")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    start_purger();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config, log_json } => {
            let config = Config::load(&config)?;
            let mut log = config.log.clone();
            if log_json {
                log.format = sluice::config::LogFormat::Json;
            }
            // Held to the end: dropping it writes the log lines still queued.
            let _log_writer =
                sluice::logging::init_stderr(&log).map_err(|err| anyhow::anyhow!(err))?;
            let metrics = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("seconds".to_string()),
                    &[
                        0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    ],
                )?
                .install_recorder()?;
            let server = Server::start(config, Some(metrics)).await?;
            wait_for_signal().await;
            tracing::info!("shutting down: draining requests and flushing");
            server.shutdown().await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => check_command(&config).await,
        Command::Schema { command } => match command {
            SchemaCommand::Ddl {
                schemas,
                database,
                server_version,
                config,
            } => {
                let (schemas, database, version) = match config {
                    Some(path) => {
                        let config = Config::load(&path)?;
                        let c = &config.clickhouse;
                        let (user, password) = c.admin_credentials();
                        let version =
                            check::server_version(&ch::client(&c.url, user, password)).await?;
                        (config.schemas, c.database.clone(), version)
                    }
                    None => {
                        let text = server_version.unwrap_or_else(|| "18.16".to_string());
                        let version = ServerVersion::parse(&text).ok_or_else(|| {
                            anyhow::anyhow!(
                                "--server-version: {text:?} is not a version like 18.16"
                            )
                        })?;
                        (schemas, database, version)
                    }
                };
                let set = SchemaSet::load_dir(&schemas)?;
                let statements =
                    ddl::statements(set.latest().map(|s| s.as_ref()), &database, version);
                println!("-- sluice DDL for ClickHouse {version}");
                print!("{}", ddl::script(&statements));
                Ok(ExitCode::SUCCESS)
            }
            SchemaCommand::Roles { database } => {
                print!("{}", sluice::schema::roles::script(&database));
                Ok(ExitCode::SUCCESS)
            }
            SchemaCommand::Apply { config } => {
                let config = Config::load(&config)?;
                let c = &config.clickhouse;
                let set = SchemaSet::load_dir(&config.schemas)?;
                let version = check::apply_schemas_everywhere(c, &set).await?;
                println!(
                    "applied {} schema(s) to {} on ClickHouse {version}",
                    set.latest().count(),
                    c.database
                );
                Ok(ExitCode::SUCCESS)
            }
        },
        Command::Certs {
            command: CertsCommand::Dev { out },
        } => {
            let paths = sluice::certs::write_dev_certs(&out)?;
            println!("wrote development certificates to {}:", out.display());
            for (role, pair) in [
                ("CA", &paths.ca),
                ("server (localhost, 127.0.0.1)", &paths.server),
                ("client edge-a.sluice.local", &paths.client_a),
                ("client edge-b.sluice.local", &paths.client_b),
                (
                    "client signed by another CA (refused)",
                    &paths.client_untrusted,
                ),
                ("client expired in 2021 (refused)", &paths.client_expired),
                (
                    "client revoked by the CRL (refused with client_crls)",
                    &paths.client_revoked,
                ),
            ] {
                println!("  {role}: {} {}", pair.cert.display(), pair.key.display());
            }
            println!("  CRL of the CA: {}", paths.crl.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn check_command(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let report = check::report(path, now).await;
    print!("{report}");
    Ok(ExitCode::from(report.exit_code()))
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    #[cfg(target_os = "linux")]
    use std::time::{Duration, Instant};

    /// Resident bytes of this process.
    #[cfg(target_os = "linux")]
    fn resident() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
        let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        // SAFETY: a plain query of a system constant.
        pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize
    }

    /// Pages freed by a thread other than the one that allocated them (a request's batch,
    /// freed by an accumulator) go back to the OS within a few purges, with no other thread
    /// allocating, where mimalloc's own delay would keep them a second or more.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_purger_hands_freed_pages_back() {
        super::start_purger();
        let blocks: Vec<Vec<u8>> =
            std::thread::spawn(|| (0..1024).map(|_| vec![1u8; 64 << 10]).collect())
                .join()
                .unwrap();
        let before = resident();
        drop(blocks);
        // Under mimalloc's own 1 s delay: without the purger nothing goes back by then.
        let deadline = Instant::now() + Duration::from_millis(800);
        loop {
            let returned = before.saturating_sub(resident());
            if returned >= 48 << 20 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} MiB of the 64 MiB freed went back to the OS within 800 ms",
                returned >> 20
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn the_purge_delay_option_index_is_mimallocs() {
        // SAFETY: reads a plain integer option.
        let delay = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(
            delay,
            1000,
            "index {} is not purge_delay (default 1000 ms)",
            super::MI_OPTION_PURGE_DELAY
        );
    }
}
