//! The `sluice` command: parses arguments and runs the chosen command.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sluice", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Certificate helpers.
    #[command(subcommand)]
    Certs(CertsCommand),
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Write a development CA, a server certificate and edge client certificates (not for
    /// production: keys are unencrypted).
    Dev {
        /// Directory to write into (created if missing; existing files are overwritten).
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Certs(CertsCommand::Dev { out }) => {
            let paths = sluice::certs::write_dev_certs(&out)?;
            for (role, pair) in [
                ("dev CA", &paths.ca),
                ("server", &paths.server),
                ("client edge-a", &paths.client_a),
                ("client edge-b", &paths.client_b),
                ("client signed by an untrusted CA", &paths.client_untrusted),
            ] {
                println!("{role:<34} {}  {}", pair.cert.display(), pair.key.display());
            }
        }
    }
    Ok(())
}
