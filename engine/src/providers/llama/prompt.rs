//! Few-shot prompts for a base (not instruction-tuned) model.
//!
//! A base model only continues text, so each request is written as the next
//! entry of a document whose earlier entries show the wanted behaviour: phone
//! calls where the assistant speaks one line or calls one tool as a JSON
//! line, and extraction tasks answered with one JSON line. The examples come
//! first and never change, so their tokens stay in the model's cache from
//! one request to the next; what varies (instructions, tools, the
//! conversation) comes last.

use crate::providers::ChatMessage;
use crate::providers::structured::{ResultSchema, describe};

/// The fixed head of every chat prompt: the format and two example calls.
pub const CHAT_EXAMPLES: &str = r#"Below are transcripts of phone calls answered by an AI assistant. Each call starts with the assistant's instructions and the tools it may use. On each of its turns the assistant either says one short sentence, or calls one tool by writing {"tool": name, "arguments": {...}}. It calls a tool as soon as the caller asks for what the tool does, with the arguments taken from the caller's words, then answers from the tool's result.

### Call
Instructions: You are the receptionist of Bright Smile Dental. Be brief and friendly.
Tools:
- book_appointment(day: string, time: string, name: string): Books a dental appointment.
- transfer_to_human(): Transfers the caller to a member of staff.
Caller: Hello, can I book a cleaning on Tuesday at 3 pm? My name is Ana Lopez.
Assistant: {"tool": "book_appointment", "arguments": {"day": "Tuesday", "name": "Ana Lopez", "time": "3 pm"}}
Result: {"booked": true}
Assistant: You're booked for Tuesday at 3 pm, Ana. Anything else?
Caller: Can I talk to a person about my bill?
Assistant: {"tool": "transfer_to_human", "arguments": {}}
Result: {"transferred": true}
Assistant: I'm putting you through now. Goodbye!

### Call
Instructions: You answer calls for the City Library.
Tools:
- get_opening_hours(day: string): Gets the library's opening hours on a day.
Caller: Hi there.
Assistant: Hello, this is the City Library. How can I help you?
Caller: Are you open on Sunday?
Assistant: {"tool": "get_opening_hours", "arguments": {"day": "Sunday"}}
Result: {"open": "12:00", "close": "17:00"}
Assistant: On Sunday we are open from noon to 5 pm.
Caller: Great, thank you.
Assistant: You're welcome. Have a nice day!
"#;

/// The fixed head of every extraction prompt: the format and one example.
pub const JSON_EXAMPLES: &str = r#"Below are extraction tasks. Each gives instructions, a text and the fields to fill; the answer is one JSON object with every field, its values taken from the text, and null for a field the text does not give.

### Task
Instructions: Extract the table booking from the call.
Text:
Caller: Hi, I'd like a table for four on Friday evening.
Agent: Sure, under what name?
Caller: Smith. We'd like to sit outside if possible.
Fields: {"day": string, "name": string, "party_size": integer, "outside": boolean, "phone": string or null}
JSON: {"day": "Friday", "name": "Smith", "party_size": 4, "outside": true, "phone": null}
"#;

/// A tool as the prompt lists it.
#[derive(Debug, Clone, Copy)]
pub struct PromptTool<'a> {
    /// Its name.
    pub name: &'a str,
    /// What it does.
    pub description: &'a str,
    /// Its arguments.
    pub arguments: &'a ResultSchema,
}

/// The chat prompt for `messages` (oldest first) and `tools`, skipping the
/// first `skip` non-system messages (to fit the context). It ends with
/// `Assistant:`, where the model continues.
pub fn chat(messages: &[ChatMessage], tools: &[PromptTool<'_>], skip: usize) -> String {
    let mut out = String::with_capacity(CHAT_EXAMPLES.len() + 1024);
    out.push_str(CHAT_EXAMPLES);
    out.push_str("\n### Call\nInstructions:");
    let instructions: Vec<&str> = messages
        .iter()
        .filter_map(|m| match m {
            ChatMessage::System { content } => Some(content.trim()),
            _ => None,
        })
        .filter(|c| !c.is_empty())
        .collect();
    out.push(' ');
    out.push_str(&one_line(&instructions.join(" ")));
    out.push('\n');
    if !tools.is_empty() {
        out.push_str("Tools:\n");
        for tool in tools {
            let arguments: Vec<String> = tool
                .arguments
                .properties()
                .iter()
                .map(|p| format!("{}: {}", p.name, describe(&p.schema)))
                .collect();
            out.push_str(&format!(
                "- {}({}): {}\n",
                tool.name,
                arguments.join(", "),
                one_line(tool.description)
            ));
        }
    }
    let turns = messages
        .iter()
        .filter(|m| !matches!(m, ChatMessage::System { .. }))
        .skip(skip);
    for message in turns {
        match message {
            ChatMessage::System { .. } => {}
            ChatMessage::User { content } => {
                out.push_str(&format!("Caller: {}\n", one_line(content)));
            }
            ChatMessage::Assistant {
                content,
                tool_calls,
            } => {
                if !content.trim().is_empty() {
                    out.push_str(&format!("Assistant: {}\n", one_line(content)));
                }
                for call in tool_calls {
                    let arguments = serde_json::from_str::<serde_json::Value>(&call.arguments_json)
                        .map(|v| spaced_json(&v))
                        .unwrap_or_else(|_| one_line(&call.arguments_json));
                    out.push_str(&format!(
                        "Assistant: {{\"tool\": {}, \"arguments\": {arguments}}}\n",
                        serde_json::Value::from(call.name.as_str())
                    ));
                }
            }
            ChatMessage::Tool { content, .. } => {
                let result = serde_json::from_str::<serde_json::Value>(content)
                    .map(|v| spaced_json(&v))
                    .unwrap_or_else(|_| one_line(content));
                out.push_str(&format!("Result: {result}\n"));
            }
        }
    }
    out.push_str("Assistant:");
    out
}

/// The number of non-system messages in `messages`.
pub fn turn_count(messages: &[ChatMessage]) -> usize {
    messages
        .iter()
        .filter(|m| !matches!(m, ChatMessage::System { .. }))
        .count()
}

/// The extraction prompt; it ends with `JSON:`, where the model continues.
pub fn json(system: &str, user: &str, schema: &ResultSchema) -> String {
    let text: Vec<&str> = user
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    format!(
        "{JSON_EXAMPLES}\n### Task\nInstructions: {}\nText:\n{}\nFields: {}\nJSON:",
        one_line(system),
        text.join("\n"),
        describe(schema.root()),
    )
}

/// `value` on one line in the layout the grammars use and the examples
/// show: `{"a": 1, "b": [2, 3]}`.
pub fn spaced_json(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(spaced_json).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(map) => {
            let fields: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", Value::from(k.as_str()), spaced_json(v)))
                .collect();
            format!("{{{}}}", fields.join(", "))
        }
        scalar => scalar.to_string(),
    }
}

/// `text` on one line (the format is line-based: a newline ends a turn).
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ToolCallRequest;
    use serde_json::json;

    #[test]
    fn a_conversation_continues_the_examples() {
        let weather = ResultSchema::parse(&json!({"type": "object",
            "properties": {"city": {"type": "string"}}, "required": ["city"]}))
        .expect("schema");
        let tools = [PromptTool {
            name: "get_weather",
            description: "Gets the weather\nin a city.",
            arguments: &weather,
        }];
        let messages = vec![
            ChatMessage::System {
                content: "You are a weather line.".into(),
            },
            ChatMessage::User {
                content: "Hi!".into(),
            },
            ChatMessage::Assistant {
                content: "Hello.".into(),
                tool_calls: vec![],
            },
            ChatMessage::User {
                content: "Weather in\nOslo?".into(),
            },
            ChatMessage::Assistant {
                content: String::new(),
                tool_calls: vec![ToolCallRequest {
                    id: "c1".into(),
                    name: "get_weather".into(),
                    arguments_json: r#"{ "city" : "Oslo" }"#.into(),
                }],
            },
            ChatMessage::Tool {
                tool_call_id: "c1".into(),
                name: "get_weather".into(),
                content: r#"{"sky": "clear"}"#.into(),
            },
        ];
        let prompt = chat(&messages, &tools, 0);
        assert!(prompt.starts_with(CHAT_EXAMPLES));
        let tail = &prompt[CHAT_EXAMPLES.len()..];
        assert_eq!(
            tail,
            "\n### Call\nInstructions: You are a weather line.\nTools:\n\
             - get_weather(city: string): Gets the weather in a city.\n\
             Caller: Hi!\nAssistant: Hello.\nCaller: Weather in Oslo?\n\
             Assistant: {\"tool\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n\
             Result: {\"sky\": \"clear\"}\nAssistant:"
        );
        assert_eq!(turn_count(&messages), 5);
        let trimmed = chat(&messages, &tools, 2);
        assert!(trimmed.contains("Tools:\n- get_weather"));
        assert!(!trimmed.contains("Caller: Hi!"));
        assert!(trimmed.contains("Caller: Weather in Oslo?"));
    }
}
