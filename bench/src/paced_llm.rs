//! A scripted chat model for load runs: the same token pacing as the
//! engine's `ScriptedLlm` (first token after the time to first token, one
//! word per token after that), but it keeps no log of requests. The engine's
//! scripted model records every request with its whole history, which over a
//! minute of a thousand calls would be counted as memory per call.

use std::sync::Arc;
use std::time::Duration;

use callingbox_engine::providers::{ChatMessage, LlmEvent, LlmProvider, LlmRequest, ProviderError};
use futures::StreamExt;
use futures::stream::BoxStream;

/// Replies by user turn: the request answering the n-th user message (0-based)
/// gets `replies[n]`, or `fallback` past the end.
#[derive(Debug, Clone)]
pub struct PacedLlm {
    replies: Arc<Vec<String>>,
    fallback: String,
    time_to_first_token: Duration,
    token_interval: Duration,
}

impl PacedLlm {
    /// A model that answers turn n with `replies[n]`, its first token after
    /// `time_to_first_token`, then `tokens_per_second`.
    pub fn new(
        replies: Vec<String>,
        fallback: &str,
        time_to_first_token: Duration,
        tokens_per_second: u32,
    ) -> Self {
        PacedLlm {
            replies: Arc::new(replies),
            fallback: fallback.to_owned(),
            time_to_first_token,
            token_interval: Duration::from_secs(1) / tokens_per_second.max(1),
        }
    }
}

impl LlmProvider for PacedLlm {
    fn stream_chat(
        &self,
        request: LlmRequest,
    ) -> BoxStream<'static, Result<LlmEvent, ProviderError>> {
        let users = request
            .messages
            .iter()
            .filter(|m| matches!(m, ChatMessage::User { .. }))
            .count();
        let text = users
            .checked_sub(1)
            .and_then(|turn| self.replies.get(turn))
            .unwrap_or(&self.fallback);
        let tokens: Vec<String> = text.split_inclusive(' ').map(str::to_owned).collect();
        let first = self.time_to_first_token;
        let interval = self.token_interval;
        futures::stream::unfold(
            (tokens.into_iter(), 0usize, false),
            move |(mut tokens, index, done)| async move {
                if done {
                    return None;
                }
                match tokens.next() {
                    Some(token) => {
                        tokio::time::sleep(if index == 0 { first } else { interval }).await;
                        Some((Ok(LlmEvent::Token(token)), (tokens, index + 1, false)))
                    }
                    None => {
                        if index == 0 {
                            tokio::time::sleep(first).await;
                        }
                        Some((Ok(LlmEvent::Done), (tokens, index, true)))
                    }
                }
            },
        )
        .boxed()
    }
}
