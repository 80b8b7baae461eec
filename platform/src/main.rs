//! `callingbox`: the one binary of CallingBox: the server, the operator's
//! verbs, the demo, and the audio foundation's check (`phone-path`).

mod cli;
mod phone_path;

use std::path::PathBuf;
use std::process::ExitCode;

use callingbox::config::Config;
use clap::{Parser, Subcommand};

/// The self-hostable API for AI phone calls.
#[derive(Debug, Parser)]
#[command(name = "callingbox", version, about, long_about = None)]
struct Cli {
    /// A TOML configuration file (see README: Configuration).
    #[arg(long, global = true, env = "CALLINGBOX_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the API server, the call workers (SIP) and graceful shutdown.
    Serve {
        /// HTTP address of the API (overrides the configuration).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Database URL (overrides DATABASE_URL and the configuration).
        #[arg(long)]
        database_url: Option<String>,
    },
    /// The whole system on embedded defaults: an agent calls a simulated
    /// callee on the local carrier; prints the live transcript and the result.
    Demo {
        /// The recorded fixtures.
        #[arg(long, default_value = "fixtures/audio")]
        fixtures: PathBuf,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 240)]
        timeout_seconds: u64,
    },
    /// Operator: API keys (shown once, stored as hashes).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Operator: credits of organizations.
    Credits {
        #[command(subcommand)]
        command: CreditsCommand,
    },
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

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key for an organization (created with the starting credit if new).
    Create {
        /// The key's name.
        #[arg(long, default_value = "default")]
        name: String,
        /// The organization's name or id.
        #[arg(long, default_value = "default")]
        org: String,
        /// Days until the key expires (never by default).
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// List keys (never the keys themselves).
    List,
    /// Revoke a key by id: it stops working on its next request.
    Revoke {
        /// The key's id (from `keys list`).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum CreditsCommand {
    /// Add credits to an organization.
    Add {
        /// The organization's name or id.
        #[arg(long, default_value = "default")]
        org: String,
        /// Dollars, e.g. 10 or 10.50.
        amount: String,
    },
    /// Balances, holds and this month's usage of every organization.
    Show,
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CALLINGBOX_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let json = std::env::var("CALLINGBOX_LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve {
            listen,
            database_url,
        } => {
            if let Some(listen) = listen {
                config.listen = listen;
            }
            if let Some(url) = database_url {
                config.database_url = url;
            }
            init_tracing();
            cli::serve::run(config).await
        }
        Command::Demo {
            fixtures,
            timeout_seconds,
        } => {
            init_tracing();
            let options = cli::demo::DemoOptions {
                fixtures,
                timeout: std::time::Duration::from_secs(timeout_seconds),
            };
            cli::demo::run(options).await
        }
        Command::Keys { command } => match command {
            KeysCommand::Create {
                name,
                org,
                expires_in_days,
            } => cli::operator::create_key(&config, &org, &name, expires_in_days).await,
            KeysCommand::List => cli::operator::list_keys(&config).await,
            KeysCommand::Revoke { id } => cli::operator::revoke_key(&config, &id).await,
        },
        Command::Credits { command } => match command {
            CreditsCommand::Add { org, amount } => {
                cli::operator::add_credits(&config, &org, &amount).await
            }
            CreditsCommand::Show => cli::operator::show_credits(&config).await,
        },
        Command::PhonePath { fixtures, json } => phone_path::run(&fixtures, json),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
