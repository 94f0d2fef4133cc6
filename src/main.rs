use std::io::{self, BufWriter, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use currents_heap::commands::config::{self, Config};
use currents_heap::commands::worker::Exit;
use currents_heap::commands::{
    Cli, Command, LogFormat, backfill, check, inspect, replay, run, status,
};
use currents_heap::heap::delivery::{BodyLimit, Disposer};
use currents_heap::heap::map::HeapMapper;
use tracing_subscriber::EnvFilter;

/// Exits as clap would, but naming the variable of a refused value that came from one, and
/// without the query string of any URL given as an argument or a `CURRENTS_HEAP_*` variable:
/// clap repeats a refused value whole (`invalid value '…'`), and a pasted Azure SAS URL
/// carries its signature there.
fn exit_without_url_secrets(error: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        error.exit();
    }
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let message =
        config::refused_value(&error, &args).unwrap_or_else(|| error.render().to_string());
    let message = without_url_secrets(message);
    eprint!("{message}");
    std::process::exit(error.exit_code());
}

/// `message` with the query string of any URL given as an argument or a `CURRENTS_HEAP_*`
/// variable cut off.
fn without_url_secrets(mut message: String) -> String {
    // Lossy, not `std::env::args`: that panics on an argument that is not UTF-8.
    let values = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .chain(
            std::env::vars_os()
                .filter(|(name, _)| name.to_string_lossy().starts_with("CURRENTS_HEAP_"))
                .map(|(_, value)| value.to_string_lossy().into_owned()),
        );
    for value in values {
        // `--source=URL` is one argument: the URL starts after the `=`.
        let url = value
            .split_once('=')
            .filter(|(flag, _)| flag.starts_with("--"))
            .map_or(value.as_str(), |(_, url)| url);
        if url.contains("://")
            && let Some(cut) = url.find(['?', '#'])
        {
            message = message.replace(url, &format!("{}…", &url[..cut]));
        }
    }
    message
}

fn main() -> ExitCode {
    // clap itself exits 2 on usage errors, as the exit-code contract wants.
    let matches = Cli::command()
        .try_get_matches()
        .unwrap_or_else(|e| exit_without_url_secrets(e));
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if cli.command.is_none() && !cli.print_config {
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingSubcommand,
                "a command is required (or --print-config alone, for every option)",
            )
            .exit();
    }
    let resolved = match config::resolve(&cli, &matches) {
        Ok(resolved) => resolved,
        Err(message) => {
            eprintln!("error: {}", without_url_secrets(message));
            return ExitCode::from(2);
        }
    };
    // After the configuration, so that the file's `log_format` applies.
    init_logging(resolved.config.log_format);
    for warning in &resolved.warnings {
        tracing::warn!("{warning}");
    }
    let config = resolved.config;
    if cli.print_config {
        return match config::render(&config) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot print the configuration: {e}");
                ExitCode::from(2)
            }
        };
    }
    let Some(command) = cli.command else {
        // Refused above: without a command only --print-config runs.
        return ExitCode::from(2);
    };
    let exit = match command {
        Command::Inspect { paths, heap, .. } => return inspect_command(&paths, heap, &config),
        Command::Run(args) => runtime().block_on(run::run(args, config)),
        Command::Backfill(args) => runtime().block_on(backfill::backfill(args, config)),
        Command::Replay(args) => runtime().block_on(replay::replay(args, config)),
        Command::Status(args) => runtime().block_on(status::status(config, args.json())),
        Command::Check(args) => runtime().block_on(check::check(args, config)),
    };
    match &exit {
        Exit::Success | Exit::Parked => {}
        Exit::Usage(message) | Exit::Fatal(message) => tracing::error!("{message}"),
        Exit::Incomplete(message) => tracing::warn!(
            "stopped before the work was done: {message}; run the same command again to resume"
        ),
    }
    ExitCode::from(exit.code())
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_env_filter(filter)
        .with_target(false);
    match format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Human => logs
            .with_ansi(io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .init(),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the async runtime starts")
}

fn inspect_command(paths: &[PathBuf], heap: bool, config: &Config) -> ExitCode {
    let mut inputs = Vec::with_capacity(paths.len());
    for path in paths {
        match inspect::Input::parse(path) {
            Ok(input) => inputs.push(input),
            Err(message) => {
                tracing::error!("{}", without_url_secrets(message));
                return ExitCode::from(2);
            }
        }
    }
    let output = if heap {
        inspect::Output::Heap(
            Disposer::new(
                HeapMapper::new(config.mapping()),
                BodyLimit::unknown_app(config.max_body_bytes as usize),
            )
            .with_user_properties(config.properties()),
        )
    } else {
        inspect::Output::CustomHttp
    };
    // The stores' requests run on this runtime; the blocking reads over them, on this
    // thread, outside it.
    let runtime = runtime();
    let remote = inspect::Remote {
        runtime: runtime.handle().clone(),
        path_style: config.s3_path_style,
        metrics: std::sync::Arc::new(currents_heap::telemetry::Metrics::new()),
    };
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let result = inspect::inspect_inputs(
        &inputs,
        Some(&remote),
        io::stdin().lock(),
        &output,
        &mut out,
    );
    if let Ok(report) = &result {
        for (event_type, n) in &report.skipped_no_identity {
            tracing::info!("{n} {event_type} events have no identity and would not be sent");
        }
        if report.user_property_updates + report.user_property_updates_skipped > 0 {
            tracing::info!(
                "{} user-property updates printed; {} have no identity and would not be sent",
                report.user_property_updates,
                report.user_property_updates_skipped
            );
        }
        for (kind, n) in &report.odd_values {
            tracing::warn!("{n} odd property values ({kind}) were repaired by the value table");
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
            // An input that is missing or denied is wiring to fix, as everywhere in the CLI.
            if report.unreachable > 0 {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
        // Most likely a closed stdout (`| head`): nothing more to say.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("cannot write output: {e}");
            ExitCode::FAILURE
        }
    }
}
