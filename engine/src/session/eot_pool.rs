//! The end-of-turn model off the audio path: a thread that owns Smart Turn
//! and scores whatever requests are waiting in one batch, so no call's
//! frames ever wait for an inference (Pipecat awaits it inline, stalling the
//! call's audio for 50-130 ms at every end of speech).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::eot::{EotError, SmartTurn};

/// One request: the caller's key, the turn machine's request id, the audio.
#[derive(Debug)]
pub struct EotRequest {
    /// Whose request (the worker's call key).
    pub key: u64,
    /// The turn machine's request id.
    pub request: u64,
    /// Up to 8 s of 16 kHz audio, oldest first.
    pub audio: Vec<i16>,
    /// When it was submitted (requests older than the pool's `max_age` are
    /// dropped unscored: the turn machine has moved on without them).
    pub submitted_at: std::time::Instant,
}

/// One answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EotAnswer {
    /// Whose request.
    pub key: u64,
    /// The request id.
    pub request: u64,
    /// Probability that the turn is complete.
    pub probability_complete: f32,
    /// When the request was submitted.
    pub submitted_at: std::time::Instant,
}

/// A running end-of-turn model thread.
#[derive(Debug)]
pub struct EotPool {
    requests: Option<SyncSender<EotRequest>>,
    answers: Receiver<EotAnswer>,
    thread: Option<JoinHandle<()>>,
    dropped: Arc<AtomicU64>,
}

/// Requests waiting beyond this many are refused: the model is behind, and
/// the turn machine's cues decide (after its answer timeout).
const QUEUE_CAPACITY: usize = 64;
/// A request waiting this long is dropped unscored: the turn machine stops
/// waiting for an answer after 800 ms by default.
const MAX_AGE: Duration = Duration::from_millis(800);

impl EotPool {
    /// Loads Smart Turn and starts its thread; `max_batch` requests share one inference.
    pub fn start(max_batch: usize) -> Result<Self, EotError> {
        let model = SmartTurn::load(max_batch)?;
        Ok(Self::with_model(model))
    }

    /// Starts the thread around a loaded model.
    pub fn with_model(mut model: SmartTurn) -> Self {
        let (request_tx, request_rx) = mpsc::sync_channel::<EotRequest>(QUEUE_CAPACITY);
        let dropped = Arc::new(AtomicU64::new(0));
        let dropped_in_thread = Arc::clone(&dropped);
        let (answer_tx, answer_rx) = mpsc::channel::<EotAnswer>();
        let max_batch = model.max_batch().max(1);
        let thread = std::thread::Builder::new()
            .name("callingbox-eot".into())
            .spawn(move || {
                let mut batch: Vec<EotRequest> = Vec::with_capacity(max_batch);
                let mut probabilities = vec![0.0f32; max_batch];
                // Blocks for the first request, then takes whatever else is waiting.
                while let Ok(first) = request_rx.recv() {
                    let mut next = Some(first);
                    while let Some(request) = next.take() {
                        if request.submitted_at.elapsed() > MAX_AGE {
                            dropped_in_thread.fetch_add(1, Ordering::Relaxed);
                        } else {
                            batch.push(request);
                        }
                        if batch.len() < max_batch {
                            next = request_rx.try_recv().ok();
                        }
                    }
                    if batch.is_empty() {
                        continue;
                    }
                    let audio: Vec<&[i16]> = batch.iter().map(|r| r.audio.as_slice()).collect();
                    let out = &mut probabilities[..batch.len()];
                    // A failed inference answers "complete" with 0.5: neither
                    // holds the turn nor forces it; the cues decide.
                    if model.predict_batch(&audio, out).is_err() {
                        out.fill(0.5);
                    }
                    for (request, &probability_complete) in batch.drain(..).zip(out.iter()) {
                        let _ = answer_tx.send(EotAnswer {
                            key: request.key,
                            request: request.request,
                            probability_complete,
                            submitted_at: request.submitted_at,
                        });
                    }
                }
            })
            .ok();
        EotPool {
            requests: Some(request_tx),
            answers: answer_rx,
            thread,
            dropped,
        }
    }

    /// Queues a request; never blocks. A full queue drops it (counted).
    pub fn submit(&self, request: EotRequest) {
        if let Some(requests) = &self.requests
            && let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
                requests.try_send(request)
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Requests dropped unscored: refused by a full queue, or too old by the
    /// time the model got to them.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// An answer if one is ready; never blocks.
    pub fn try_answer(&self) -> Option<EotAnswer> {
        self.answers.try_recv().ok()
    }
}

impl Drop for EotPool {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop.
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
