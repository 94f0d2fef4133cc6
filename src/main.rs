use std::io::{self, BufWriter};
use std::process::ExitCode;

use clap::Parser;
use currents_heap::commands::{Cli, Command, inspect};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_target(false)
        .init();
    match cli.command {
        Command::Inspect { paths } => {
            let stdout = io::stdout();
            let mut out = BufWriter::new(stdout.lock());
            match inspect::inspect(&paths, &mut out) {
                Ok(report) if report.failures.is_empty() => ExitCode::SUCCESS,
                Ok(report) => {
                    tracing::error!(
                        "{} of {} files failed",
                        report.failures.len(),
                        report.failures.len() + report.files_read
                    );
                    ExitCode::FAILURE
                }
                // Most likely a closed stdout (`| head`): nothing more to say.
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("cannot write output: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
