//! The call plan: one call record resolved into what the engine runs (the
//! seam in ARCHITECTURE.md). The engine never reads the database; the
//! control plane never touches audio.

use std::time::Duration;

use callingbox_engine::conversation::AgentConfig;
use callingbox_engine::tools::{ToolSet, ToolSetParseError};
use serde_json::Value;

use crate::store::calls::Call;

/// Everything the engine needs to run one call.
#[derive(Debug, Clone)]
pub struct CallPlan {
    /// The call's id (for logs and events).
    pub call_id: String,
    /// `outbound` or `inbound`.
    pub direction: String,
    /// Who is called (outbound) or who called (inbound), E.164.
    pub to_number: String,
    /// Caller ID (outbound) or the number dialled (inbound), E.164.
    pub from_number: String,
    /// The system prompt: the rendered prompt, the call's context and the
    /// language to speak.
    pub system_prompt: String,
    /// The agent's tools.
    pub tools: ToolSet,
    /// TTS voice (`default`: the provider's default).
    pub voice: String,
    /// BCP-47 language.
    pub language: String,
    /// `hangup` or `leave_message` when a machine answers.
    pub voicemail_action: String,
    /// The longest the call may last (the hold covers it).
    pub max_duration: Duration,
}

impl CallPlan {
    /// The plan of `call`; fails only if its stored tools do not parse
    /// (they were validated when the call was created).
    pub fn from_call(call: &Call, max_duration: Duration) -> Result<CallPlan, ToolSetParseError> {
        let tools = ToolSet::from_json(&call.tools.to_string())?;
        Ok(CallPlan {
            call_id: call.id.clone(),
            direction: call.direction.clone(),
            to_number: call.to_number.clone(),
            from_number: call.from_number.clone(),
            system_prompt: system_prompt(&call.prompt, &call.context, &call.language),
            tools,
            voice: call.voice.clone(),
            language: call.language.clone(),
            voicemail_action: call.voicemail_action.clone(),
            max_duration,
        })
    }

    /// The agent loop's configuration.
    pub fn agent_config(&self) -> AgentConfig {
        AgentConfig {
            system_prompt: self.system_prompt.clone(),
            tools: self.tools.clone(),
            ..AgentConfig::default()
        }
    }
}

/// The prompt, then the context as JSON the agent may use (kept apart from
/// the instructions, as the reference says), then the language rule.
pub fn system_prompt(prompt: &str, context: &Value, language: &str) -> String {
    let mut text = prompt.trim().to_owned();
    if context.as_object().is_some_and(|c| !c.is_empty()) {
        text.push_str("\n\nContext for this call (JSON; use it, do not read it out verbatim):\n");
        text.push_str(&context.to_string());
    }
    let primary = language
        .split('-')
        .next()
        .unwrap_or("en")
        .to_ascii_lowercase();
    let name = match primary.as_str() {
        "es" => "Spanish",
        _ => "English",
    };
    text.push_str(&format!(
        "\n\nThis is a live phone call: answer in {name}, in one or two short spoken sentences, with no lists or markup."
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_system_prompt_carries_context_and_language() {
        let text = system_prompt("Confirm the visit.", &json!({"patient": "Ana"}), "es-MX");
        assert!(text.starts_with("Confirm the visit."));
        assert!(text.contains(r#"{"patient":"Ana"}"#));
        assert!(text.contains("answer in Spanish"));
        let plain = system_prompt("Hi.", &json!({}), "en");
        assert!(!plain.contains("Context"));
        assert!(plain.contains("answer in English"));
    }
}
