//! Runs the Heap stand-in on loopback for local demos and load runs, until Ctrl-C:
//! `cargo run --example heap_standin -- APP_ID [--no-limits] [--delay-ms N]`; point `HEAP_API_URL` at the
//! printed URL. It enforces Heap's track contract and (unless `--no-limits`) its rate limits,
//! and the `add_user_properties` contract (no limit: Heap states none).

use std::time::Duration;

use currents_heap::heap::pacer::RateLimits;
use currents_heap_testkit::standin::{Standin, StandinConfig};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "heap_standin [APP_ID] [--no-limits] [--delay-ms N]: a Heap track and add_user_properties API stand-in on loopback; prints its URL, runs until Ctrl-C (SIGINT), then prints what it stored (and up to 20 identities' user properties)"
        );
        return;
    }
    let app_id = args.first().cloned().unwrap_or_else(|| "1".into());
    let mut config = StandinConfig::new(app_id);
    if args.iter().any(|a| a == "--no-limits") {
        config.limits = RateLimits {
            app_events: 0,
            identity_events: 0,
            window: Duration::from_secs(60),
        };
    }
    // `--delay-ms N`: every answer after N ms, about Heap's own pace under load.
    if let Some(ms) = args
        .iter()
        .position(|a| a == "--delay-ms")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse::<u64>().ok())
    {
        config.response_delay = Duration::from_millis(ms);
    }
    let standin = Standin::start(config).await.expect("the stand-in starts");
    println!("{}", standin.url());
    let _ = tokio::signal::ctrl_c().await;
    let report = standin.report();
    eprintln!(
        "stored {} events; {} requests, {} invalid, {} over the rate limits, {} duplicates",
        standin.stored().len(),
        report.requests,
        report.invalid_requests,
        report.limit_violations,
        report.duplicates
    );
    // A line of its own, after track's (which scripts parse), for the user properties.
    let properties = standin.user_properties_report();
    eprintln!(
        "user properties of {} identities; {} requests, {} accepted, {} invalid, {} answered 429, {} users received",
        standin.user_properties().len(),
        properties.requests,
        properties.accepted_requests,
        properties.invalid_requests,
        properties.too_many_requests,
        properties.users_received
    );
    // What each identity holds now (last write wins, as Heap), for a look at a small demo.
    let applied = standin.user_properties();
    for (identity, values) in applied.iter().take(SHOWN_IDENTITIES) {
        let values = serde_json::to_string(values).unwrap_or_default();
        eprintln!("  {identity}: {values}");
    }
    if applied.len() > SHOWN_IDENTITIES {
        eprintln!("  … and {} more", applied.len() - SHOWN_IDENTITIES);
    }
}

/// How many identities' user properties the stop prints.
const SHOWN_IDENTITIES: usize = 20;
