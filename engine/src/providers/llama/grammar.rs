//! GBNF grammars (llama.cpp's grammar format) generated from JSON schemas,
//! so a small model can only write JSON that follows the schema.
//!
//! llama.cpp ships its own schema converter; this one is ours because the
//! local model needs a narrower language than "any valid JSON": one fixed
//! layout (`{"a": 1, "b": "x"}`, keys in schema order, one space after `:`
//! and `,`, no other whitespace), every string and array bounded so a greedy
//! base model cannot run on forever, every property present (the
//! [`structured`](crate::providers::structured) contract), and a newline
//! after the value so the decoder knows the answer is over. Schemas outside
//! the subset are refused by [`ResultSchema::parse`] before they get here.

use std::fmt::Write as _;

use crate::providers::structured::{ResultSchema, SchemaKind, SchemaNode};

/// The longest string value when the schema sets no `maxLength`.
pub const DEFAULT_MAX_STRING_CHARS: u32 = 200;
/// The longest array when the schema sets no `maxItems`.
pub const DEFAULT_MAX_ITEMS: u32 = 8;

/// The grammar of one JSON answer following `schema`: a space (the prompt
/// ends with `JSON:`), the object, a newline.
pub fn json_answer(schema: &ResultSchema) -> String {
    let mut grammar = Grammar::default();
    let object = grammar.node(schema.root());
    grammar.finish(&format!("\" \" {object} \"\\n\""))
}

/// A tool the model may call: its name and its arguments' schema.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolGrammar<'a> {
    /// The tool's name.
    pub name: &'a str,
    /// Its arguments (an object schema).
    pub arguments: &'a ResultSchema,
}

/// The grammar of one assistant turn: either a spoken line (a space, text
/// that does not start with `{`, a newline) or, when `tools` is not empty,
/// one call `{"tool": "name", "arguments": {...}}` of one of the tools, with
/// arguments following its schema, then a newline.
pub fn assistant_turn(tools: &[ToolGrammar<'_>]) -> String {
    let mut grammar = Grammar::default();
    grammar.rule("say", r#"" " [^{\n ] [^\n]* "\n""#.to_owned());
    if tools.is_empty() {
        return grammar.finish("say");
    }
    let mut calls = Vec::with_capacity(tools.len());
    for tool in tools {
        let arguments = grammar.node(tool.arguments.root());
        let head = format!(
            "{{\"tool\": {}, \"arguments\": ",
            serde_json::Value::from(tool.name)
        );
        calls.push(format!("{} {arguments}", literal(&head)));
    }
    let body = calls.join(" | ");
    grammar.rule("call", format!("\" \" ({body}) \"}}\\n\""));
    grammar.finish("say | call")
}

/// Rules under construction; shared primitives are added once.
#[derive(Default)]
struct Grammar {
    rules: Vec<(String, String)>,
    next: usize,
}

impl Grammar {
    fn rule(&mut self, name: &str, body: String) {
        if !self.rules.iter().any(|(n, _)| n == name) {
            self.rules.push((name.to_owned(), body));
        }
    }

    fn fresh(&mut self, body: String) -> String {
        self.next += 1;
        let name = format!("v{}", self.next);
        self.rules.push((name.clone(), body));
        name
    }

    /// The grammar text with `root ::= root_body` first.
    fn finish(self, root_body: &str) -> String {
        let mut out = format!("root ::= {root_body}\n");
        for (name, body) in self.rules {
            let _ = writeln!(out, "{name} ::= {body}");
        }
        out
    }

    /// A rule name (or inline expression) for the values `node` accepts.
    fn node(&mut self, node: &SchemaNode) -> String {
        let value = match &node.kind {
            SchemaKind::String { max_length } => {
                self.rule(
                    "char",
                    r#"[^"\\\x00-\x1F\x7F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})"#.to_owned(),
                );
                let max = max_length.unwrap_or(DEFAULT_MAX_STRING_CHARS);
                self.fresh(format!(r#""\"" char{{0,{max}}} "\"""#))
            }
            SchemaKind::Enum(options) => {
                let alternatives: Vec<String> = options
                    .iter()
                    .map(|o| literal(&serde_json::Value::from(o.as_str()).to_string()))
                    .collect();
                self.fresh(alternatives.join(" | "))
            }
            SchemaKind::Integer => {
                self.rule("integer", r#""-"? ([0-9] | [1-9] [0-9]{1,15})"#.to_owned());
                "integer".to_owned()
            }
            SchemaKind::Number => {
                self.rule(
                    "number",
                    r#""-"? ([0-9] | [1-9] [0-9]{1,15}) ("." [0-9]{1,6})?"#.to_owned(),
                );
                "number".to_owned()
            }
            SchemaKind::Boolean => {
                self.rule("boolean", r#""true" | "false""#.to_owned());
                "boolean".to_owned()
            }
            SchemaKind::Array { items, max_items } => {
                let item = self.node(items);
                let max = max_items.unwrap_or(DEFAULT_MAX_ITEMS);
                let body = if max == 0 {
                    r#""[]""#.to_owned()
                } else {
                    format!(r#""[" ({item} ("," " " {item}){{0,{}}})? "]""#, max - 1)
                };
                self.fresh(body)
            }
            SchemaKind::Object(properties) => {
                if properties.is_empty() {
                    self.fresh(r#""{}""#.to_owned())
                } else {
                    let mut parts = Vec::with_capacity(properties.len() * 2 + 1);
                    for (i, property) in properties.iter().enumerate() {
                        let key = serde_json::Value::from(property.name.as_str()).to_string();
                        let lead = if i == 0 { "{" } else { ", " };
                        parts.push(literal(&format!("{lead}{key}: ")));
                        parts.push(self.node(&property.schema));
                    }
                    parts.push(literal("}"));
                    self.fresh(parts.join(" "))
                }
            }
        };
        if node.nullable {
            format!(r#"({value} | "null")"#)
        } else {
            value
        }
    }
}

/// `text` as a GBNF string literal.
fn literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema(value: serde_json::Value) -> ResultSchema {
        ResultSchema::parse(&value).expect("supported schema")
    }

    #[test]
    fn an_object_of_typed_properties() {
        let grammar = json_answer(&schema(json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 40},
                "age": {"type": "integer"},
                "score": {"type": ["number", "null"]},
                "ok": {"type": "boolean"}
            },
            "required": ["name", "age", "score", "ok"]
        })));
        // Keys come in the schema map's order (alphabetical with serde_json);
        // shared rules are defined once, where first used.
        assert_eq!(
            grammar,
            [
                r#"root ::= " " v2 "\n""#,
                r#"integer ::= "-"? ([0-9] | [1-9] [0-9]{1,15})"#,
                r#"char ::= [^"\\\x00-\x1F\x7F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})"#,
                r#"v1 ::= "\"" char{0,40} "\"""#,
                r#"boolean ::= "true" | "false""#,
                r#"number ::= "-"? ([0-9] | [1-9] [0-9]{1,15}) ("." [0-9]{1,6})?"#,
                r#"v2 ::= "{\"age\": " integer ", \"name\": " v1 ", \"ok\": " boolean ", \"score\": " (number | "null") "}""#,
            ]
            .map(|line| format!("{line}\n"))
            .concat()
        );
    }

    #[test]
    fn optional_properties_enums_arrays_and_nesting() {
        let grammar = json_answer(&schema(json!({
            "type": "object",
            "properties": {
                "mood": {"enum": ["happy", "say \"hi\""]},
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
                "address": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"]
                }
            },
            "required": ["mood", "tags"]
        })));
        // `address` was not required: it may be null. The enum's quotes are
        // escaped twice (JSON inside a GBNF literal).
        assert_eq!(
            grammar,
            [
                r#"root ::= " " v6 "\n""#,
                r#"char ::= [^"\\\x00-\x1F\x7F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})"#,
                r#"v1 ::= "\"" char{0,200} "\"""#,
                r#"v2 ::= "{\"city\": " v1 "}""#,
                r#"v3 ::= "\"happy\"" | "\"say \\\"hi\\\"\"""#,
                r#"v4 ::= "\"" char{0,200} "\"""#,
                r#"v5 ::= "[" (v4 ("," " " v4){0,2})? "]""#,
                r#"v6 ::= "{\"address\": " (v2 | "null") ", \"mood\": " v3 ", \"tags\": " v5 "}""#,
            ]
            .map(|line| format!("{line}\n"))
            .concat()
        );
    }

    #[test]
    fn a_turn_is_a_spoken_line_or_one_call() {
        let weather = schema(json!({
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"]
        }));
        let nothing = schema(json!({"type": "object"}));
        let grammar = assistant_turn(&[
            ToolGrammar {
                name: "get_weather",
                arguments: &weather,
            },
            ToolGrammar {
                name: "transfer",
                arguments: &nothing,
            },
        ]);
        assert_eq!(
            grammar.lines().next(),
            Some("root ::= say | call"),
            "{grammar}"
        );
        assert!(grammar.contains(r#"say ::= " " [^{\n ] [^\n]* "\n""#));
        assert!(grammar.contains(
            r#"call ::= " " ("{\"tool\": \"get_weather\", \"arguments\": " v2 | "{\"tool\": \"transfer\", \"arguments\": " v3) "}\n""#
        ), "{grammar}");
        assert!(grammar.contains(r#"v3 ::= "{}""#));
        // Without tools the model can only speak.
        assert!(assistant_turn(&[]).starts_with("root ::= say\n"));
    }
}
