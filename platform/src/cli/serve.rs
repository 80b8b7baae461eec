//! `callingbox serve`: runs a [`callingbox::node::Node`] (the API, the call workers, the
//! webhook worker) until Ctrl-C or SIGTERM, then drains its live calls.

use std::time::Duration;

use anyhow::Result;
use callingbox::config::Config;
pub use callingbox::node::start_node;

/// How long live calls may run on after a shutdown signal.
const DRAIN: Duration = Duration::from_secs(30);

/// `callingbox serve`: runs until Ctrl-C or SIGTERM.
pub async fn run(config: Config) -> Result<()> {
    let (stack, extractor) = callingbox::dispatch::speech::from_env("en")
        .await
        .map_err(|err| anyhow::anyhow!("the speech providers could not start: {err}"))?;
    let node = start_node(&config, stack, extractor).await?;
    tracing::info!(api = %node.api, sip = %node.sip, node = config.node_id, "CallingBox is serving");
    eprintln!(
        "CallingBox API on http://{}  (SIP on udp {})",
        node.api, node.sip
    );
    shutdown_signal().await;
    eprintln!(
        "shutting down: letting live calls finish (up to {} s)",
        DRAIN.as_secs()
    );
    node.shutdown(DRAIN).await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
