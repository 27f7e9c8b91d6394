//! `sluice-loadtest`: run a load-test scenario against sluice, post seeded edge traffic to it, or
//! write a body to stdout.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use sluice_loadtest::generator::{
    Encoding, Format, Generator, GeneratorConfig, compress, encode_access, encode_events,
};
use sluice_loadtest::report::summary_table;
use sluice_loadtest::send::{SendOptions, Stream, send, unique_batch_prefix};
use sluice_loadtest::{RunOptions, Scenario, mtls_client, plain_client, tls_config};

#[derive(Parser)]
#[command(
    version,
    about = "Seeded edge-traffic generator and load sender for sluice"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a load-test scenario against a running sluice and its ClickHouse: send, verify,
    /// measure CPU and memory, compare with direct JSONEachRow inserts, write JSON and HTML.
    Run(Box<RunArgs>),
    /// Generate batches and POST them to a sluice stream URL.
    Send(SendArgs),
    /// Write one generated body (encoded and compressed) to stdout.
    Generate(GenerateArgs),
}

#[derive(Args)]
struct RowArgs {
    /// Rows to generate.
    #[arg(long, default_value_t = 1000)]
    rows: usize,
    /// ndjson | json | csv | delimited.
    #[arg(long, default_value = "ndjson")]
    format: Format,
    /// identity | gzip | zstd.
    #[arg(long, default_value = "gzip")]
    encoding: Encoding,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// First row time, unix seconds, or "now" (= now minus --span-secs). Give a number for
    /// byte-identical runs.
    #[arg(long, default_value = "now")]
    start: String,
    /// Row times are spread over this many seconds from --start.
    #[arg(long, default_value_t = 3600)]
    span_secs: u64,
}

impl RowArgs {
    fn generator_config(&self) -> anyhow::Result<GeneratorConfig> {
        Ok(if self.start == "now" {
            GeneratorConfig::recent(self.span_secs)
        } else {
            GeneratorConfig {
                start_unix: self
                    .start
                    .parse()
                    .with_context(|| format!("--start {:?}: unix seconds or now", self.start))?,
                span_secs: self.span_secs,
                ..GeneratorConfig::default()
            }
        })
    }
}

#[derive(Args)]
struct SendArgs {
    /// Stream URL, e.g. https://127.0.0.1:8443/v1/streams/edge_access.
    #[arg(long)]
    url: String,
    /// edge_access | edge_events (default: the URL's last path segment, else edge_access).
    #[arg(long)]
    stream: Option<Stream>,
    /// CA certificate (PEM) that signed the server's certificate.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Client certificate (PEM, may hold a chain).
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Send over plain HTTP (no TLS); the URL must be http://.
    #[arg(long, conflicts_with_all = ["ca", "cert", "key"])]
    plain_http: bool,
    #[command(flatten)]
    rows: RowArgs,
    /// Rows per batch.
    #[arg(long, default_value_t = 500)]
    batch_rows: usize,
    /// Batches in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Batch ids are PREFIX-000000, PREFIX-000001, … (default: unique per run).
    #[arg(long)]
    batch_id_prefix: Option<String>,
    /// Extra request header, "Name: value" (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
}

#[derive(Args)]
struct RunArgs {
    /// Scenario file (TOML), e.g. loadtest/scenarios/smoke.toml.
    #[arg(long)]
    scenario: PathBuf,
    /// Override any scenario key (repeatable): --set load.rate=50000, --set streams.0.format=csv,
    /// --set streams.*.encoding=identity.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// sluice's ingest base URL (target.url), e.g. https://127.0.0.1:8443.
    #[arg(long)]
    url: Option<String>,
    /// CA certificate (target.ca).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Client certificate (target.cert).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Client key (target.key).
    #[arg(long)]
    key: Option<PathBuf>,
    /// sluice's pid (target.pid; default: found by the URL's port).
    #[arg(long)]
    sluice_pid: Option<u32>,
    /// ClickHouse HTTP URL (clickhouse.url).
    #[arg(long)]
    clickhouse_url: Option<String>,
    /// The database sluice writes to (clickhouse.database).
    #[arg(long)]
    database: Option<String>,
    /// ClickHouse server's pid (clickhouse.pid; default: found by the URL's port).
    #[arg(long)]
    clickhouse_pid: Option<u32>,
    /// Seconds to send for (load.duration_secs).
    #[arg(long)]
    duration: Option<f64>,
    /// Rows to send (load.rows).
    #[arg(long)]
    rows: Option<u64>,
    /// Rows per second, 0 = as fast as possible (load.rate).
    #[arg(long)]
    rate: Option<f64>,
    /// Connections (load.connections).
    #[arg(long)]
    connections: Option<usize>,
    /// Body format of every stream entry: ndjson | json | csv | delimited.
    #[arg(long)]
    format: Option<String>,
    /// Content encoding of every stream entry: identity | gzip | zstd.
    #[arg(long)]
    encoding: Option<String>,
    /// Directory for the JSON and HTML results (output.dir).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Skip the direct JSONEachRow baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Skip the decode-only reference.
    #[arg(long)]
    no_decode_only: bool,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Only the summary table (no phase messages, no progress bar).
    #[arg(long, short)]
    quiet: bool,
}

impl RunArgs {
    /// The shorthand flags as `--set` overrides, after the explicit ones.
    fn overrides(&self) -> Vec<String> {
        let text = |v: &str| toml::Value::String(v.to_string()).to_string();
        let path = |p: &PathBuf| text(&p.to_string_lossy());
        let mut o = self.sets.clone();
        let mut set = |key: &str, value: Option<String>| {
            if let Some(v) = value {
                o.push(format!("{key}={v}"));
            }
        };
        set("target.url", self.url.as_deref().map(text));
        set("target.ca", self.ca.as_ref().map(path));
        set("target.cert", self.cert.as_ref().map(path));
        set("target.key", self.key.as_ref().map(path));
        set("target.pid", self.sluice_pid.map(|v| v.to_string()));
        set("clickhouse.url", self.clickhouse_url.as_deref().map(text));
        set("clickhouse.database", self.database.as_deref().map(text));
        set("clickhouse.pid", self.clickhouse_pid.map(|v| v.to_string()));
        set(
            "load.duration_secs",
            self.duration.map(|v| format!("{v:?}")),
        );
        set("load.rows", self.rows.map(|v| v.to_string()));
        set("load.rate", self.rate.map(|v| format!("{v:?}")));
        set("load.connections", self.connections.map(|v| v.to_string()));
        set("streams.*.format", self.format.as_deref().map(text));
        set("streams.*.encoding", self.encoding.as_deref().map(text));
        set("output.dir", self.out.as_ref().map(path));
        set("baseline.enabled", self.no_baseline.then(|| "false".into()));
        set(
            "decode_only.enabled",
            self.no_decode_only.then(|| "false".into()),
        );
        o
    }
}

#[derive(Args)]
struct GenerateArgs {
    /// edge_access | edge_events.
    #[arg(long, default_value = "edge_access")]
    stream: Stream,
    #[command(flatten)]
    rows: RowArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Run(args) => run_scenario(*args).await,
        Command::Send(args) => run_send(args).await,
        Command::Generate(args) => run_generate(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

async fn run_scenario(args: RunArgs) -> anyhow::Result<ExitCode> {
    let scenario = Scenario::load(&args.scenario, &args.overrides())?;
    let options = RunOptions {
        progress: !args.no_progress && !args.quiet,
        verbose: !args.quiet,
    };
    let outcome = sluice_loadtest::run(scenario, options).await?;
    print!("{}", summary_table(&outcome.result));
    println!("result: {}", outcome.json_path.display());
    println!("report: {}", outcome.html_path.display());
    Ok(if outcome.result.verified {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn run_send(args: SendArgs) -> anyhow::Result<ExitCode> {
    let scheme = args.url.split("://").next().unwrap_or("");
    let client = if args.plain_http {
        if scheme != "http" {
            bail!("--plain-http needs an http:// URL");
        }
        plain_client()?
    } else {
        if scheme != "https" {
            bail!("an {scheme}:// URL needs --plain-http (TLS is the default)");
        }
        let ca = args
            .ca
            .as_deref()
            .context("--ca is required for https://")?;
        match (&args.cert, &args.key) {
            (Some(cert), Some(key)) => mtls_client(ca, cert, key)?,
            _ => sluice_loadtest::client::client_with_tls(tls_config(ca, None)?)?,
        }
    };
    let stream = args
        .stream
        .or_else(|| Stream::from_url(&args.url))
        .unwrap_or(Stream::EdgeAccess);
    let headers = args
        .headers
        .iter()
        .map(|h| {
            let (name, value) = h
                .split_once(':')
                .with_context(|| format!("--header {h:?}: use \"Name: value\""))?;
            Ok((name.trim().to_string(), value.trim().to_string()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let opts = SendOptions {
        url: args.url.clone(),
        stream,
        rows: args.rows.rows,
        batch_rows: args.batch_rows,
        format: args.rows.format,
        encoding: args.rows.encoding,
        seed: args.rows.seed,
        concurrency: args.concurrency,
        generator: args.rows.generator_config()?,
        batch_id_prefix: args
            .batch_id_prefix
            .clone()
            .unwrap_or_else(|| unique_batch_prefix(args.rows.seed)),
        headers,
    };
    eprintln!(
        "sending {} {} rows to {} as {} ({}), {} rows per batch, {} in flight",
        opts.rows,
        stream.as_str(),
        opts.url,
        opts.format.as_str(),
        opts.encoding.content_encoding(),
        opts.batch_rows,
        opts.concurrency
    );
    let report = send(&client, &opts).await?;
    println!("{report}");
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn run_generate(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    let mut generator = Generator::with_config(args.rows.seed, args.rows.generator_config()?);
    let body = match args.stream {
        Stream::EdgeAccess => {
            encode_access(&generator.edge_access(args.rows.rows), args.rows.format)
        }
        Stream::EdgeEvents => {
            encode_events(&generator.edge_events(args.rows.rows), args.rows.format)
        }
    };
    let body = compress(&body, args.rows.encoding);
    std::io::stdout()
        .lock()
        .write_all(&body)
        .context("writing to stdout")?;
    Ok(ExitCode::SUCCESS)
}
