//! `callingbox`: the one binary of CallingBox. Today it carries the audio
//! foundation's check (`phone-path`); the API server, the demo and the CLI
//! verbs arrive with their issues.

mod phone_path;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The self-hostable API for AI phone calls.
#[derive(Debug, Parser)]
#[command(name = "callingbox", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Play every recorded fixture through the telephone audio path
    /// (16 kHz -> 8 kHz -> G.711 -> 8 kHz -> 16 kHz, and Opus at 48 kHz) and
    /// print its quality and its cost per 20 ms frame.
    PhonePath {
        /// The fixtures folder holding manifest.json.
        #[arg(long, default_value = "fixtures/audio")]
        fixtures: PathBuf,
        /// Print the report as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::PhonePath { fixtures, json } => phone_path::run(&fixtures, json),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
