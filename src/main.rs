use std::io::{self, BufWriter};
use std::process::ExitCode;

use clap::Parser;
use currents_heap::commands::{Cli, Command, inspect};
use currents_heap::heap::map::HeapMapper;
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
        Command::Inspect {
            paths,
            heap,
            mapping,
        } => {
            let output = if heap {
                inspect::Output::Heap(HeapMapper::new(mapping.config()))
            } else {
                inspect::Output::CustomHttp
            };
            let stdout = io::stdout();
            let mut out = BufWriter::new(stdout.lock());
            let result = inspect::inspect(&paths, &output, &mut out);
            if let Ok(report) = &result {
                for (event_type, n) in &report.skipped_no_identity {
                    tracing::info!(
                        "{n} {event_type} events have no identity and would not be sent"
                    );
                }
                for (reason, n) in &report.unsendable {
                    tracing::warn!("{n} events would be parked: {reason}");
                }
            }
            match result {
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
