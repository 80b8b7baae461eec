//! In-call tools: the agent's tool definitions (the API's tool JSON), the
//! HTTP tool runner, the `end_call` built-in and the `confirm_first_write`
//! policy.

pub mod confirm;
pub mod http;
pub mod transfer;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::providers::ToolSchema;

/// The most tools one agent may have (API §8).
pub const MAX_TOOLS: usize = 16;

/// The name of the built-in that hangs up after the agent's last words.
pub const END_CALL: &str = "end_call";
/// The name of the built-in that plays keypad digits to the far end
/// (argument `digits`: `0`-`9`, `*`, `#`, `A`-`D`, `w` for a pause).
pub const SEND_DTMF: &str = "send_dtmf";
/// The name of the built-in that blind-transfers the call to a configured
/// destination (see [`transfer`]).
pub const TRANSFER_CALL: &str = "transfer_call";
/// Every built-in this engine has.
pub const BUILTINS: [&str; 3] = [END_CALL, SEND_DTMF, TRANSFER_CALL];

/// When the model may run a tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolPolicy {
    /// Freely.
    #[default]
    Read,
    /// Only after the caller said a clear yes (see [`confirm`]).
    ConfirmFirstWrite,
}

/// An HTTP tool: the engine POSTs the arguments as JSON to `url`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpTool {
    /// The tool's name.
    pub name: String,
    /// What it does, for the model.
    #[serde(default)]
    pub description: String,
    /// When it may run.
    #[serde(default)]
    pub policy: ToolPolicy,
    /// The endpoint.
    pub url: String,
    /// The JSON schema of the arguments.
    #[serde(default = "empty_parameters")]
    pub parameters: serde_json::Value,
    /// Extra request headers (e.g. an authorization token).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The deadline for the whole request; default [`ToolLimits::http_timeout`].
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// A platform built-in such as `end_call`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuiltinTool {
    /// The name the model calls it by.
    pub name: String,
    /// What it does, for the model.
    #[serde(default)]
    pub description: String,
    /// When it may run.
    #[serde(default)]
    pub policy: ToolPolicy,
    /// Which built-in this is (defaults to `name`).
    #[serde(default)]
    pub builtin: Option<String>,
    /// The JSON schema of the arguments.
    #[serde(default = "empty_parameters")]
    pub parameters: serde_json::Value,
    /// Built-in specific settings.
    #[serde(default)]
    pub config: Option<serde_json::Value>,
}

impl BuiltinTool {
    /// The built-in this tool runs.
    pub fn kind(&self) -> &str {
        self.builtin.as_deref().unwrap_or(&self.name)
    }
}

/// One tool, as in the API's tool JSON (`"type": "http" | "builtin"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToolDefinition {
    /// An HTTP tool.
    Http(HttpTool),
    /// A platform built-in.
    Builtin(BuiltinTool),
}

impl ToolDefinition {
    /// The name the model calls it by.
    pub fn name(&self) -> &str {
        match self {
            ToolDefinition::Http(t) => &t.name,
            ToolDefinition::Builtin(t) => &t.name,
        }
    }

    /// When it may run.
    pub fn policy(&self) -> ToolPolicy {
        match self {
            ToolDefinition::Http(t) => t.policy,
            ToolDefinition::Builtin(t) => t.policy,
        }
    }

    /// The tool as the model sees it.
    pub fn schema(&self) -> ToolSchema {
        let (name, description, parameters) = match self {
            ToolDefinition::Http(t) => (&t.name, &t.description, &t.parameters),
            ToolDefinition::Builtin(t) => (&t.name, &t.description, &t.parameters),
        };
        ToolSchema {
            name: name.clone(),
            description: description.clone(),
            parameters: parameters.clone(),
        }
    }
}

/// A `send_dtmf` given without its own description or arguments gets the
/// engine's, so the model knows to pass `digits`.
fn fill_builtin_schema(tool: &mut BuiltinTool) {
    if tool.kind() == TRANSFER_CALL {
        transfer::fill_schema(tool);
        return;
    }
    if tool.kind() != SEND_DTMF {
        return;
    }
    if tool.description.is_empty() {
        tool.description =
            "Press keys on the phone keypad (to navigate a phone menu or enter a number). \
             digits: 0-9, *, #, A-D; w pauses half a second."
                .into();
    }
    if tool.parameters == empty_parameters() {
        tool.parameters = serde_json::json!({
            "type": "object",
            "properties": {"digits": {"type": "string", "description": "The keys to press, e.g. \"1\" or \"1234#\""}},
            "required": ["digits"],
            "additionalProperties": false,
        });
    }
}

fn empty_parameters() -> serde_json::Value {
    serde_json::json!({"type": "object", "properties": {}, "required": [], "additionalProperties": false})
}

/// Why a tool set was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolSetError {
    /// More than [`MAX_TOOLS`] tools.
    #[error("{0} tools given, at most {MAX_TOOLS} are allowed")]
    TooMany(usize),
    /// Two tools share a name.
    #[error("two tools are named {0:?}")]
    DuplicateName(String),
    /// A tool has an empty name.
    #[error("a tool has an empty name")]
    EmptyName,
    /// An HTTP tool's URL is not http(s).
    #[error("tool {name:?} has an invalid url {url:?}")]
    InvalidUrl {
        /// The tool.
        name: String,
        /// The URL.
        url: String,
    },
    /// A built-in this engine does not have.
    #[error("unknown built-in {0:?}")]
    UnknownBuiltin(String),
    /// A `transfer_call` without usable destinations.
    #[error("tool {name:?} (transfer_call) {reason}")]
    InvalidTransfer {
        /// The tool.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// An agent's validated tools.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ToolSet {
    tools: Vec<ToolDefinition>,
}

impl ToolSet {
    /// Validates `tools`: at most [`MAX_TOOLS`], unique non-empty names,
    /// http(s) URLs, known built-ins.
    pub fn new(mut tools: Vec<ToolDefinition>) -> Result<ToolSet, ToolSetError> {
        if tools.len() > MAX_TOOLS {
            return Err(ToolSetError::TooMany(tools.len()));
        }
        let mut names = std::collections::BTreeSet::new();
        for tool in &tools {
            if tool.name().is_empty() {
                return Err(ToolSetError::EmptyName);
            }
            if !names.insert(tool.name()) {
                return Err(ToolSetError::DuplicateName(tool.name().to_owned()));
            }
            match tool {
                ToolDefinition::Http(t) => {
                    let ok = reqwest::Url::parse(&t.url)
                        .is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
                    if !ok {
                        return Err(ToolSetError::InvalidUrl {
                            name: t.name.clone(),
                            url: t.url.clone(),
                        });
                    }
                }
                ToolDefinition::Builtin(t) => {
                    if !BUILTINS.contains(&t.kind()) {
                        return Err(ToolSetError::UnknownBuiltin(t.kind().to_owned()));
                    }
                    if t.kind() == TRANSFER_CALL {
                        transfer::destinations(t).map_err(|reason| {
                            ToolSetError::InvalidTransfer {
                                name: t.name.clone(),
                                reason,
                            }
                        })?;
                    }
                }
            }
        }
        for tool in &mut tools {
            if let ToolDefinition::Builtin(t) = tool {
                fill_builtin_schema(t);
            }
        }
        Ok(ToolSet { tools })
    }

    /// Parses the API's tool JSON array and validates it.
    pub fn from_json(json: &str) -> Result<ToolSet, ToolSetParseError> {
        let tools: Vec<ToolDefinition> = serde_json::from_str(json)?;
        Ok(ToolSet::new(tools)?)
    }

    /// The tool named `name`.
    pub fn get(&self, name: &str) -> Option<&ToolDefinition> {
        self.tools.iter().find(|t| t.name() == name)
    }

    /// The tools as the model sees them.
    pub fn schemas(&self) -> Vec<ToolSchema> {
        self.tools.iter().map(ToolDefinition::schema).collect()
    }

    /// Whether there are no tools.
    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }
}

/// Why tool JSON could not be turned into a [`ToolSet`].
#[derive(Debug, thiserror::Error)]
pub enum ToolSetParseError {
    /// Not the API's tool JSON.
    #[error("invalid tool JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Valid JSON, invalid tools.
    #[error(transparent)]
    Invalid(#[from] ToolSetError),
}

/// Deadlines and size caps for running tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolLimits {
    /// The deadline of a built-in or any non-HTTP tool.
    pub tool_timeout: Duration,
    /// The deadline of an HTTP tool without `timeout_ms`.
    pub http_timeout: Duration,
    /// The largest HTTP response body accepted.
    pub max_response_bytes: usize,
}

impl Default for ToolLimits {
    fn default() -> Self {
        ToolLimits {
            tool_timeout: Duration::from_secs(5),
            http_timeout: Duration::from_secs(10),
            max_response_bytes: 64 * 1024,
        }
    }
}

impl ToolLimits {
    /// The deadline for `tool`.
    pub fn timeout_for(&self, tool: &ToolDefinition) -> Duration {
        match tool {
            ToolDefinition::Http(t) => t
                .timeout_ms
                .map_or(self.http_timeout, Duration::from_millis),
            ToolDefinition::Builtin(_) => self.tool_timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_sdk_tool_json() {
        let json = r#"[
          {"type":"http","name":"lookup","description":"Find a booking","policy":"read",
           "url":"https://example.com/lookup","parameters":{"type":"object","properties":{"id":{"type":"string"}},"required":["id"],"additionalProperties":false},
           "headers":{"authorization":"Bearer x"},"timeout_ms":2000},
          {"type":"http","name":"book","description":"Book","policy":"confirm_first_write","url":"http://127.0.0.1:9/book","parameters":{"type":"object","properties":{},"required":[],"additionalProperties":false}},
          {"type":"builtin","name":"end_call","description":"Hang up","parameters":{"type":"object","properties":{},"required":[],"additionalProperties":false}}
        ]"#;
        let set = ToolSet::from_json(json).expect("valid tools");
        assert_eq!(set.schemas().len(), 3);
        assert_eq!(
            set.get("book").map(ToolDefinition::policy),
            Some(ToolPolicy::ConfirmFirstWrite)
        );
        assert_eq!(
            set.get("lookup").map(ToolDefinition::policy),
            Some(ToolPolicy::Read)
        );
        let limits = ToolLimits::default();
        let lookup = set.get("lookup").expect("lookup");
        assert_eq!(limits.timeout_for(lookup), Duration::from_secs(2));
        let book = set.get("book").expect("book");
        assert_eq!(limits.timeout_for(book), Duration::from_secs(10));
    }

    #[test]
    fn send_dtmf_gets_its_digits_argument_unless_given_one() {
        let set = ToolSet::from_json(
            r#"[{"type":"builtin","name":"send_dtmf"},
            {"type":"builtin","name":"keys","builtin":"send_dtmf","description":"Mine",
             "parameters":{"type":"object","properties":{"keys":{"type":"string"}}}}]"#,
        )
        .expect("valid");
        let schemas = set.schemas();
        assert_eq!(
            schemas[0].parameters["required"],
            serde_json::json!(["digits"])
        );
        assert!(schemas[0].description.contains("keypad"));
        assert_eq!(schemas[1].description, "Mine");
        assert!(schemas[1].parameters["properties"]["keys"].is_object());
    }

    #[test]
    fn rejects_bad_tool_sets() {
        let http = |name: &str, url: &str| {
            ToolDefinition::Http(HttpTool {
                name: name.into(),
                description: String::new(),
                policy: ToolPolicy::Read,
                url: url.into(),
                parameters: empty_parameters(),
                headers: BTreeMap::new(),
                timeout_ms: None,
            })
        };
        let many = (0..17)
            .map(|i| http(&format!("t{i}"), "https://x.test/"))
            .collect();
        assert_eq!(ToolSet::new(many), Err(ToolSetError::TooMany(17)));
        assert!(matches!(
            ToolSet::new(vec![
                http("a", "https://x.test/"),
                http("a", "https://x.test/")
            ]),
            Err(ToolSetError::DuplicateName(_))
        ));
        assert!(matches!(
            ToolSet::new(vec![http("a", "file:///etc/passwd")]),
            Err(ToolSetError::InvalidUrl { .. })
        ));
        assert!(matches!(
            ToolSet::from_json(r#"[{"type":"builtin","name":"transfer"}]"#),
            Err(ToolSetParseError::Invalid(ToolSetError::UnknownBuiltin(_)))
        ));
        assert!(ToolSet::from_json("{").is_err());
    }
}
