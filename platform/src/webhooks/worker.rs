//! The delivery worker: leases due deliveries, signs and POSTs them,
//! records each attempt and schedules the retries.
//!
//! * Several nodes share the work through leases (`lease_owner`,
//!   `lease_expires_at`; PostgreSQL picks rows `FOR UPDATE SKIP LOCKED`).
//!   A lease outlives the attempt's timeout, so an attempt is never
//!   duplicated by another node while it runs; a node that dies leaves its
//!   rows leased until the lease expires, or until it restarts with the
//!   same `node_id` ([`spawn`] gives its old leases back first).
//! * At-least-once: the attempt is recorded after the POST, so a crash
//!   between the two sends again (receivers dedupe by `CallingBox-Event-Id`).
//! * At most `per_destination` attempts run at once for one endpoint (or
//!   one inline URL), and destinations at their limit are left out of the
//!   lease, so a slow endpoint cannot take every slot.
//! * It wakes when a delivery is emitted ([`super::wake`]; PostgreSQL
//!   `NOTIFY` from any node) and polls every `poll_interval` besides (retries
//!   come due by time alone).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::deliveries::{self, AfterAttempt, AttemptResult, Leased};
use super::sender::{self, BuildError, Sender};
use super::{endpoints, schedule};
use crate::clock::SharedClock;
use crate::store::{Backend, Store, StoreError};

/// How the worker runs. [`WorkerSettings::new`] has the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSettings {
    /// This node's id: the lease owner (a restart gives its leases back).
    pub node_id: String,
    /// Allow loopback and private destinations (config
    /// `allow_private_webhooks`).
    pub allow_private: bool,
    /// Per attempt (connect, send, answer), default 10 s.
    pub timeout: Duration,
    /// Attempts in flight on this node, default 64.
    pub max_in_flight: usize,
    /// Attempts in flight to one destination on this node, default 4.
    pub per_destination: usize,
    /// How often due retries are looked for without a wake, default 1 s.
    pub poll_interval: Duration,
    /// How long a lease holds, default the timeout plus 30 s.
    pub lease: Duration,
}

impl WorkerSettings {
    /// The defaults for `node_id`.
    pub fn new(node_id: impl Into<String>, allow_private: bool) -> Self {
        let timeout = Duration::from_secs(10);
        WorkerSettings {
            node_id: node_id.into(),
            allow_private,
            timeout,
            max_in_flight: 64,
            per_destination: 4,
            poll_interval: Duration::from_secs(1),
            lease: timeout + Duration::from_secs(30),
        }
    }
}

/// Why the worker could not start.
#[derive(Debug, Error)]
pub enum WorkerError {
    /// The HTTP client.
    #[error(transparent)]
    Http(#[from] BuildError),
    /// The database.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// SQLite: the worker's own writes queue here, in order, instead of
/// colliding in SQLite's busy handler (which sleeps for milliseconds).
type WriteGate = Option<Arc<tokio::sync::Mutex<()>>>;

async fn lock(gate: &WriteGate) -> Option<tokio::sync::MutexGuard<'_, ()>> {
    match gate {
        Some(gate) => Some(gate.lock().await),
        None => None,
    }
}

/// An attempt to record, and where its outcome goes.
type Job = (
    Leased,
    AttemptResult,
    oneshot::Sender<Result<AfterAttempt, String>>,
);

/// Most attempts recorded in one transaction.
const RECORD_BATCH: usize = 64;

struct Inner {
    store: Store,
    clock: SharedClock,
    settings: WorkerSettings,
    sender: Sender,
    sqlite_writes: WriteGate,
    recorder: mpsc::Sender<Job>,
}

impl Inner {
    async fn write_gate(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        lock(&self.sqlite_writes).await
    }
}

/// Records the attempts that finish, those that finished together in one
/// transaction.
async fn record_loop(
    store: Store,
    clock: SharedClock,
    owner: String,
    gate: WriteGate,
    mut jobs: mpsc::Receiver<Job>,
) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        while batch.len() < RECORD_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let (items, replies): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|(leased, result, reply)| ((leased, result), reply))
            .unzip();
        let recorded = {
            let _gate = lock(&gate).await;
            deliveries::record_attempts(
                &store,
                &owner,
                &items,
                clock.now(),
                schedule::random_delay_micros,
            )
            .await
        };
        match recorded {
            Ok(afters) => {
                for (reply, after) in replies.into_iter().zip(afters) {
                    let _ = reply.send(Ok(after));
                }
            }
            Err(err) => {
                let message = err.to_string();
                for reply in replies {
                    let _ = reply.send(Err(message.clone()));
                }
            }
        }
    }
}

/// Leases and delivers; [`spawn`] runs one in the background, tests drive
/// one by hand on virtual time ([`Dispatcher::deliver_due`]).
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

/// The attempts one dispatcher has in flight.
struct InFlight {
    tasks: JoinSet<(String, Result<AfterAttempt, String>)>,
    per_destination: HashMap<String, usize>,
}

impl InFlight {
    fn new() -> Self {
        InFlight {
            tasks: JoinSet::new(),
            per_destination: HashMap::new(),
        }
    }

    fn finished(
        &mut self,
        joined: Result<(String, Result<AfterAttempt, String>), tokio::task::JoinError>,
    ) {
        match joined {
            Ok((destination, result)) => {
                if let Some(n) = self.per_destination.get_mut(&destination) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.per_destination.remove(&destination);
                    }
                }
                if let Err(err) = result {
                    // The lease expires and the row is attempted again.
                    tracing::warn!(%err, "webhook attempt could not be recorded");
                }
            }
            Err(err) => {
                // Only a panic gets here; the counts are rebuilt from
                // scratch so a lost destination cannot stay saturated.
                tracing::error!(%err, "webhook attempt task failed");
                if self.tasks.is_empty() {
                    self.per_destination.clear();
                }
            }
        }
    }
}

impl Dispatcher {
    /// A dispatcher over `store` (call it inside a tokio runtime: it
    /// starts the task that records attempts).
    pub fn new(
        store: Store,
        clock: SharedClock,
        settings: WorkerSettings,
    ) -> Result<Dispatcher, WorkerError> {
        let sender = Sender::new(settings.timeout, settings.allow_private)?;
        let sqlite_writes =
            (store.backend() == Backend::Sqlite).then(|| Arc::new(tokio::sync::Mutex::new(())));
        let (recorder, jobs) = mpsc::channel(4 * RECORD_BATCH);
        tokio::spawn(record_loop(
            store.clone(),
            Arc::clone(&clock),
            settings.node_id.clone(),
            sqlite_writes.clone(),
            jobs,
        ));
        Ok(Dispatcher {
            inner: Arc::new(Inner {
                store,
                clock,
                settings,
                sender,
                sqlite_writes,
                recorder,
            }),
        })
    }

    /// Gives back the leases this node held before a restart; returns how
    /// many.
    pub async fn recover(&self) -> Result<u64, StoreError> {
        deliveries::release_all(&self.inner.store, &self.inner.settings.node_id).await
    }

    /// Leases what is due and fits the limits and starts the attempts;
    /// true if the lease came back full (more may be due).
    async fn fill(&self, in_flight: &mut InFlight) -> Result<bool, StoreError> {
        let settings = &self.inner.settings;
        let free = settings.max_in_flight.saturating_sub(in_flight.tasks.len());
        if free == 0 {
            return Ok(false);
        }
        let now = self.inner.clock.now();
        let lease_until = now.plus_micros(i64::try_from(settings.lease.as_micros()).unwrap_or(0));
        let leased = {
            let _gate = self.inner.write_gate().await;
            deliveries::lease(
                &self.inner.store,
                &settings.node_id,
                now,
                lease_until,
                free,
                &in_flight.per_destination,
                settings.per_destination,
            )
            .await?
        };
        let full = leased.len() >= free;
        // The secrets, read once for the batch.
        let mut endpoint_ids: Vec<&str> = leased
            .iter()
            .filter_map(|r| r.endpoint_id.as_deref())
            .collect();
        endpoint_ids.sort_unstable();
        endpoint_ids.dedup();
        let mut org_ids: Vec<&str> = leased
            .iter()
            .filter(|r| r.endpoint_id.is_none())
            .map(|r| r.org_id.as_str())
            .collect();
        org_ids.sort_unstable();
        org_ids.dedup();
        let endpoint_states = endpoints::signing_states(&self.inner.store, &endpoint_ids).await?;
        let org_secrets = endpoints::default_secrets(&self.inner.store, &org_ids).await?;
        for row in leased {
            let signing = match &row.endpoint_id {
                Some(id) => match endpoint_states.get(id) {
                    None => Signing::EndpointDeleted,
                    Some((status, _)) if status != endpoints::ENABLED => Signing::EndpointDisabled,
                    Some((_, secret)) => Signing::Secret(secret.clone()),
                },
                None => match org_secrets.get(&row.org_id) {
                    Some(secret) => Signing::Secret(secret.clone()),
                    None => Signing::OrgMissing,
                },
            };
            let destination = row.destination().to_owned();
            *in_flight
                .per_destination
                .entry(destination.clone())
                .or_default() += 1;
            let inner = Arc::clone(&self.inner);
            in_flight
                .tasks
                .spawn(async move { (destination, attempt(&inner, row, signing).await) });
        }
        Ok(full)
    }

    /// Delivers everything due now (as the clock says), waiting for each
    /// attempt, until nothing is due; returns the attempts made. Tests on
    /// virtual time call this after moving the clock.
    pub async fn deliver_due(&self) -> Result<usize, StoreError> {
        let mut in_flight = InFlight::new();
        let mut made = 0;
        loop {
            self.fill(&mut in_flight).await?;
            match in_flight.tasks.join_next().await {
                None => return Ok(made),
                Some(joined) => {
                    made += 1;
                    in_flight.finished(joined);
                }
            }
        }
    }

    /// Runs until `stop` turns true, then lets the attempts in flight
    /// finish (each is bounded by the timeout).
    async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut wake = super::subscribe();
        let mut in_flight = InFlight::new();
        let poll = self.inner.settings.poll_interval;
        let mut stopping = *stop.borrow();
        while !stopping {
            // Seen before the lease: a wake from now on means a new row.
            wake.borrow_and_update();
            let more = match self.fill(&mut in_flight).await {
                Ok(full) => full,
                Err(err) => {
                    tracing::warn!(%err, "leasing webhook deliveries failed");
                    false
                }
            };
            if more && in_flight.tasks.len() < self.inner.settings.max_in_flight {
                continue;
            }
            tokio::select! {
                Some(joined) = in_flight.tasks.join_next(), if !in_flight.tasks.is_empty() => {
                    in_flight.finished(joined);
                    while let Some(joined) = in_flight.tasks.try_join_next() {
                        in_flight.finished(joined);
                    }
                }
                changed = wake.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep(poll).await;
                    }
                }
                _ = tokio::time::sleep(poll) => {}
                _ = stop.changed() => stopping = true,
            }
            stopping |= *stop.borrow();
        }
        while let Some(joined) = in_flight.tasks.join_next().await {
            in_flight.finished(joined);
        }
    }
}

/// What a leased delivery is signed with.
enum Signing {
    Secret(String),
    EndpointDeleted,
    EndpointDisabled,
    OrgMissing,
}

/// One attempt at a leased delivery, recorded.
async fn attempt(inner: &Inner, leased: Leased, signing: Signing) -> Result<AfterAttempt, String> {
    let store = &inner.store;
    let owner = &inner.settings.node_id;
    let secret = match signing {
        Signing::Secret(secret) => secret,
        Signing::EndpointDeleted => {
            let now = inner.clock.now();
            let _gate = inner.write_gate().await;
            deliveries::abandon(store, owner, &leased.id, "endpoint deleted", now)
                .await
                .map_err(|e| e.to_string())?;
            return Ok(AfterAttempt::Exhausted {
                endpoint_disabled: false,
            });
        }
        Signing::EndpointDisabled => {
            // Disabled since the lease: the delivery waits for a re-enable.
            let _gate = inner.write_gate().await;
            deliveries::release(store, owner, std::slice::from_ref(&leased.id))
                .await
                .map_err(|e| e.to_string())?;
            return Ok(AfterAttempt::LeaseLost);
        }
        Signing::OrgMissing => return Err(format!("org {} vanished", leased.org_id)),
    };
    let started_at = inner.clock.now();
    let outcome = inner
        .sender
        .send(&sender::Request {
            url: &leased.url,
            body: &leased.payload,
            secret: &secret,
            timestamp: started_at.unix_seconds(),
            event_id: &leased.id,
            event_type: &leased.event_type,
            call_id: leased.call_id.as_deref(),
        })
        .await;
    if let Some(error) = &outcome.error {
        tracing::debug!(delivery = %leased.id, url = %leased.url, %error, "webhook attempt failed");
    }
    let result = AttemptResult {
        started_at,
        duration_ms: i64::try_from(outcome.elapsed.as_millis()).unwrap_or(i64::MAX),
        response_status: outcome.status,
        error: outcome.error,
        response_excerpt: outcome.excerpt,
    };
    let (reply, outcome) = oneshot::channel();
    if inner
        .recorder
        .send((leased.clone(), result, reply))
        .await
        .is_err()
    {
        return Err("the attempt recorder stopped".into());
    }
    let after = outcome
        .await
        .map_err(|_| "the attempt recorder stopped".to_owned())??;
    if let AfterAttempt::Exhausted {
        endpoint_disabled: true,
    } = after
    {
        tracing::warn!(endpoint = ?leased.endpoint_id, "webhook endpoint disabled: too many failures");
    }
    Ok(after)
}

/// The running worker. Dropping it stops the worker too (without waiting);
/// [`WorkerHandle::shutdown`] waits for the attempts in flight.
#[derive(Debug)]
pub struct WorkerHandle {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    listener: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    /// Stops leasing, waits for the attempts in flight (at most the
    /// timeout) and returns.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(listener) = self.listener.take() {
            listener.abort();
        }
        if let Some(task) = self.task.take()
            && let Err(err) = task.await
        {
            tracing::error!(%err, "the webhook worker ended abnormally");
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(listener) = self.listener.take() {
            listener.abort();
        }
    }
}

/// Starts the delivery worker of this node: gives back the leases an
/// earlier run of `settings.node_id` left, then delivers until
/// [`WorkerHandle::shutdown`]. On PostgreSQL it also listens for the
/// `NOTIFY` every node's [`super::emit`] sends on commit.
pub async fn spawn(
    store: Store,
    clock: SharedClock,
    settings: WorkerSettings,
) -> Result<WorkerHandle, WorkerError> {
    let listener = if store.backend() == Backend::Postgres {
        let url = store.pool().connect_options().database_url.to_string();
        Some(tokio::spawn(listen(url)))
    } else {
        None
    };
    let dispatcher = Dispatcher::new(store, clock, settings)?;
    let recovered = dispatcher.recover().await?;
    if recovered > 0 {
        tracing::info!(
            recovered,
            "webhook deliveries leased before a restart are due again"
        );
    }
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(dispatcher.run(stopped));
    Ok(WorkerHandle {
        stop,
        task: Some(task),
        listener,
    })
}

/// Wakes this process's workers on every `NOTIFY` (from any node).
async fn listen(url: String) {
    loop {
        match sqlx::postgres::PgListener::connect(&url).await {
            Ok(mut listener) => {
                if let Err(err) = listener.listen(super::NOTIFY_CHANNEL).await {
                    tracing::warn!(%err, "LISTEN for webhook wakes failed");
                } else {
                    // Anything emitted while we were not listening.
                    super::wake();
                    loop {
                        match listener.recv().await {
                            Ok(_) => super::wake(),
                            Err(err) => {
                                tracing::warn!(%err, "webhook wake listener lost its connection");
                                break;
                            }
                        }
                    }
                }
            }
            Err(err) => tracing::warn!(%err, "cannot connect the webhook wake listener"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
