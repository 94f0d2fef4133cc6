//! The command line: one module per command, each a function the binary and the tests share.

pub mod inspect;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Delivers Braze Currents events to Heap's server-side track API.
#[derive(Debug, Parser)]
#[command(name = "currents-heap", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print Currents Avro files as Braze Custom HTTP connector events, one JSON object per line.
    ///
    /// Takes files or directories (searched recursively for `.avro` files). A file that cannot
    /// be read gets one error line on stderr; the others are still printed, and the exit code
    /// is 1 if any file failed.
    Inspect {
        /// Avro files, or directories to search for them.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}
