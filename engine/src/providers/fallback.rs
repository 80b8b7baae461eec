//! A chat model with a stand-by. When the primary fails before it produced
//! anything (unreachable, a 5xx, no first event within the wait), the same
//! request goes to the fallback, so the caller hears an answer rather than
//! an error. A failure after the first event is not retried: words already
//! spoken cannot be taken back, so it ends the turn as any failure does.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;

use super::{LlmEvent, LlmProvider, LlmRequest, ProviderError};

/// `primary`, or `fallback` when the primary fails before its first event.
pub struct FallbackLlm {
    primary: Arc<dyn LlmProvider>,
    fallback: Arc<dyn LlmProvider>,
    first_event_wait: Duration,
}

impl FallbackLlm {
    /// Switches to `fallback` when `primary` errs or sends nothing within
    /// `first_event_wait` (keep it below the agent's `llm_timeout`, or the
    /// turn gives up first).
    pub fn new(
        primary: Arc<dyn LlmProvider>,
        fallback: Arc<dyn LlmProvider>,
        first_event_wait: Duration,
    ) -> Self {
        FallbackLlm {
            primary,
            fallback,
            first_event_wait,
        }
    }
}

impl LlmProvider for FallbackLlm {
    fn stream_chat(
        &self,
        request: LlmRequest,
    ) -> BoxStream<'static, Result<LlmEvent, ProviderError>> {
        let mut primary = self.primary.stream_chat(request.clone());
        let fallback = Arc::clone(&self.fallback);
        let wait = self.first_event_wait;
        futures::stream::once(async move {
            let why = match tokio::time::timeout(wait, primary.next()).await {
                Ok(Some(Ok(first))) => {
                    return futures::stream::once(async move { Ok(first) })
                        .chain(primary)
                        .boxed();
                }
                Ok(None) => return primary,
                Ok(Some(Err(error))) => error.to_string(),
                Err(_) => format!("no first event within {} ms", wait.as_millis()),
            };
            // Cancel the primary's request before starting the fallback's.
            drop(primary);
            fallback
                .stream_chat(request)
                .map(move |event| {
                    event.map_err(|error| {
                        ProviderError::Unavailable(format!(
                            "the primary model failed ({why}), and so did the fallback: {error}"
                        ))
                    })
                })
                .boxed()
        })
        .flatten()
        .boxed()
    }
}
