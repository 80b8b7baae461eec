//! Trials in child processes: a capacity benchmark runs each trial in a
//! fresh process of its own binary (`<binary> --child <config JSON>`), so
//! one trial's threads, sockets and heap never weigh on the next, and a
//! trial that dies does not take the search with it. The child prints its
//! result as one `RESULT <json>` line on stdout.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The error type of the benchmark binaries.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// If this process is a trial's child (`args` start with `--child`), runs
/// `trial` on its config, prints the result and exits the process: the
/// trial's calls and threads are not torn down one by one. Returns
/// otherwise.
pub fn run_if_child<C, R>(args: &[String], trial: impl FnOnce(&C) -> Result<R, BoxError>)
where
    C: DeserializeOwned,
    R: Serialize,
{
    if args.first().map(String::as_str) != Some("--child") {
        return;
    }
    let result = args
        .get(1)
        .ok_or_else(|| BoxError::from("--child needs a config"))
        .and_then(|json| Ok(serde_json::from_str::<C>(json)?))
        .and_then(|config| trial(&config))
        .and_then(|result| Ok(serde_json::to_string(&result)?));
    match result {
        Ok(json) => {
            println!("RESULT {json}");
            std::process::exit(0)
        }
        Err(err) => {
            eprintln!("trial failed: {err}");
            std::process::exit(1)
        }
    }
}

/// Runs one trial with `config` in a child process of this binary and
/// returns what it printed (its stderr goes to ours).
pub fn run_in_child<C: Serialize, R: DeserializeOwned>(config: &C) -> Result<R, BoxError> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .arg("--child")
        .arg(serde_json::to_string(config)?)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no child stdout")?;
    let mut result = None;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(json) = line.strip_prefix("RESULT ") {
            result = Some(serde_json::from_str::<R>(json)?);
        }
    }
    let status = child.wait()?;
    result.ok_or_else(|| format!("the trial printed no result ({status})").into())
}
