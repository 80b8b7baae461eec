//! Structured output: one JSON object that follows a JSON schema, for
//! extraction (the control plane fills a call's `returns` fields from its
//! transcript).
//!
//! [`StructuredCompletion::complete_json`] is implemented by the
//! OpenAI-compatible client (`response_format` `json_schema`, strict), by
//! Anthropic (a forced tool whose `input_schema` is the schema), by the local
//! llama.cpp model (a grammar generated from the schema) and by the scripted
//! LLM (a configured value).
//!
//! Every backend gets the same contract, whatever its native rules:
//! * the schema must fit the subset [`ResultSchema`] reads (an object of
//!   typed properties: string, string enum, number, integer, boolean, arrays
//!   and nested objects of those; nullable through `"type": [t, "null"]`),
//!   otherwise the call fails with [`ProviderError::InvalidRequest`] before
//!   anything is sent;
//! * the answer holds **every** property of every object: a property not in
//!   `required` is made nullable and comes back as `null` when the model has
//!   no value for it. That is what OpenAI's strict mode demands, and the
//!   other backends are held to it, so callers see one shape;
//! * the answer is checked against the schema; a mismatch is a
//!   [`ProviderError::BadResponse`].

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};

use super::ProviderError;

/// A model that answers with one JSON object following a schema.
///
/// The future is `'static` and boxed so the trait can be used as
/// `Arc<dyn StructuredCompletion>`; dropping it cancels the request.
pub trait StructuredCompletion: Send + Sync {
    /// Asks the model for an object following `schema` (see the module
    /// docs for the subset and the shape of the answer): `system` holds the
    /// instructions, `user` the material (a transcript, say).
    fn complete_json(
        &self,
        system: &str,
        user: &str,
        schema: &Value,
    ) -> BoxFuture<'static, Result<Value, ProviderError>>;
}

/// A schema outside the supported subset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported JSON schema at {path}: {reason}")]
pub struct SchemaError {
    /// Where in the schema, as a JSON pointer (`""` is the root).
    pub path: String,
    /// What is wrong there.
    pub reason: String,
}

impl From<SchemaError> for ProviderError {
    fn from(error: SchemaError) -> Self {
        ProviderError::InvalidRequest(error.to_string())
    }
}

/// The type of one schema node.
#[derive(Debug, Clone, PartialEq)]
pub enum SchemaKind {
    /// A string, at most `max_length` characters when set.
    String {
        /// `maxLength`.
        max_length: Option<u32>,
    },
    /// One of these strings (`enum`).
    Enum(Vec<String>),
    /// Any JSON number.
    Number,
    /// A whole number.
    Integer,
    /// `true` or `false`.
    Boolean,
    /// A list of `items`, at most `max_items` long when set.
    Array {
        /// The schema of each item.
        items: Box<SchemaNode>,
        /// `maxItems`.
        max_items: Option<u32>,
    },
    /// An object with these properties, in the schema's key order.
    Object(Vec<Property>),
}

/// One schema node: a type, whether `null` is allowed, a description.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaNode {
    /// The type.
    pub kind: SchemaKind,
    /// Whether `null` is also accepted.
    pub nullable: bool,
    /// The node's `description`, if any.
    pub description: Option<String>,
}

/// A property of an object schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Property {
    /// The key.
    pub name: String,
    /// Its schema. A property the source schema did not require is nullable
    /// here (see the module docs).
    pub schema: SchemaNode,
}

/// A result schema: an object of typed properties, read from JSON schema.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultSchema {
    root: SchemaNode,
}

impl ResultSchema {
    /// Reads `schema`, whose root must be an object.
    pub fn parse(schema: &Value) -> Result<Self, SchemaError> {
        let root = parse_node(schema, "")?;
        if !matches!(root.kind, SchemaKind::Object(_)) || root.nullable {
            return Err(SchemaError {
                path: String::new(),
                reason: "the root must be a (non-null) object".into(),
            });
        }
        Ok(ResultSchema { root })
    }

    /// The root node (an object).
    pub fn root(&self) -> &SchemaNode {
        &self.root
    }

    /// The root's properties.
    pub fn properties(&self) -> &[Property] {
        match &self.root.kind {
            SchemaKind::Object(properties) => properties,
            _ => &[],
        }
    }

    /// The schema in the strict form (every object lists all its properties
    /// as required and forbids others; optional ones are nullable), as OpenAI's
    /// strict mode wants it and as every backend answers.
    pub fn strict_json(&self) -> Value {
        strict_node(&self.root)
    }

    /// Checks that `value` follows the (strict) schema: every property
    /// present, no other key, every value of its type.
    pub fn check(&self, value: &Value) -> Result<(), String> {
        check_node(&self.root, value, "")
    }

    /// [`ResultSchema::check`] as the provider error for a wrong answer.
    pub fn check_answer(&self, vendor: &str, value: &Value) -> Result<(), ProviderError> {
        self.check(value).map_err(|reason| {
            ProviderError::BadResponse(format!(
                "{vendor}: the answer does not follow the schema: {reason}"
            ))
        })
    }
}

fn parse_node(value: &Value, path: &str) -> Result<SchemaNode, SchemaError> {
    let fail = |reason: String| SchemaError {
        path: path.to_owned(),
        reason,
    };
    let Some(object) = value.as_object() else {
        return Err(fail("a schema must be an object".into()));
    };
    for unsupported in [
        "anyOf", "oneOf", "allOf", "$ref", "not", "if", "pattern", "format",
    ] {
        if object.contains_key(unsupported) {
            return Err(fail(format!("`{unsupported}` is not supported")));
        }
    }
    let description = object
        .get("description")
        .and_then(Value::as_str)
        .map(str::to_owned);
    // "type": "t" or ["t", "null"] (either order).
    let (type_name, mut nullable) = match object.get("type") {
        Some(Value::String(name)) => (name.clone(), false),
        Some(Value::Array(names)) => {
            let names: Vec<&str> = names.iter().filter_map(Value::as_str).collect();
            let non_null: Vec<&str> = names.iter().copied().filter(|n| *n != "null").collect();
            if non_null.len() != 1 || names.len() > 2 {
                return Err(fail(
                    "a type list must be one type, optionally with \"null\"".into(),
                ));
            }
            (non_null[0].to_owned(), names.len() == 2)
        }
        // An enum without a type is a string enum.
        None if object.contains_key("enum") => ("string".into(), false),
        _ => return Err(fail("`type` is missing".into())),
    };
    let length = |key: &str| -> Result<Option<u32>, SchemaError> {
        match object.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| fail(format!("`{key}` must be a small whole number"))),
        }
    };
    let kind = match type_name.as_str() {
        "string" => match object.get("enum") {
            None => SchemaKind::String {
                max_length: length("maxLength")?,
            },
            Some(Value::Array(options)) => {
                let mut strings = Vec::new();
                for option in options {
                    match option {
                        Value::String(s) => strings.push(s.clone()),
                        // `null` among the options means nullable.
                        Value::Null => nullable = true,
                        other => return Err(fail(format!("enum option {other} is not a string"))),
                    }
                }
                if strings.is_empty() {
                    return Err(fail("an enum needs at least one string".into()));
                }
                SchemaKind::Enum(strings)
            }
            Some(_) => return Err(fail("`enum` must be a list".into())),
        },
        "number" => SchemaKind::Number,
        "integer" => SchemaKind::Integer,
        "boolean" => SchemaKind::Boolean,
        "array" => {
            let items = object
                .get("items")
                .ok_or_else(|| fail("an array needs `items`".into()))?;
            SchemaKind::Array {
                items: Box::new(parse_node(items, &format!("{path}/items"))?),
                max_items: length("maxItems")?,
            }
        }
        "object" => {
            let empty = Map::new();
            let properties = match object.get("properties") {
                None => &empty,
                Some(Value::Object(properties)) => properties,
                Some(_) => return Err(fail("`properties` must be an object".into())),
            };
            let required: Vec<&str> = match object.get("required") {
                None => Vec::new(),
                Some(Value::Array(names)) => names.iter().filter_map(Value::as_str).collect(),
                Some(_) => return Err(fail("`required` must be a list".into())),
            };
            if let Some(missing) = required.iter().find(|r| !properties.contains_key(**r)) {
                return Err(fail(format!(
                    "required property `{missing}` is not defined"
                )));
            }
            let mut list = Vec::with_capacity(properties.len());
            for (name, property) in properties {
                let mut schema = parse_node(property, &format!("{path}/properties/{name}"))?;
                if !required.contains(&name.as_str()) {
                    schema.nullable = true;
                }
                list.push(Property {
                    name: name.clone(),
                    schema,
                });
            }
            SchemaKind::Object(list)
        }
        other => return Err(fail(format!("type `{other}` is not supported"))),
    };
    Ok(SchemaNode {
        kind,
        nullable,
        description,
    })
}

fn strict_node(node: &SchemaNode) -> Value {
    let type_of = |name: &str| {
        if node.nullable {
            json!([name, "null"])
        } else {
            json!(name)
        }
    };
    let mut out = match &node.kind {
        SchemaKind::String { max_length } => {
            let mut out = json!({"type": type_of("string")});
            if let Some(max) = max_length {
                out["maxLength"] = json!(max);
            }
            out
        }
        SchemaKind::Enum(options) => {
            let mut values: Vec<Value> = options.iter().map(|o| json!(o)).collect();
            if node.nullable {
                values.push(Value::Null);
            }
            json!({"type": type_of("string"), "enum": values})
        }
        SchemaKind::Number => json!({"type": type_of("number")}),
        SchemaKind::Integer => json!({"type": type_of("integer")}),
        SchemaKind::Boolean => json!({"type": type_of("boolean")}),
        SchemaKind::Array { items, max_items } => {
            let mut out = json!({"type": type_of("array"), "items": strict_node(items)});
            if let Some(max) = max_items {
                out["maxItems"] = json!(max);
            }
            out
        }
        SchemaKind::Object(properties) => {
            let props: Map<String, Value> = properties
                .iter()
                .map(|p| (p.name.clone(), strict_node(&p.schema)))
                .collect();
            let required: Vec<&str> = properties.iter().map(|p| p.name.as_str()).collect();
            json!({
                "type": type_of("object"),
                "properties": props,
                "required": required,
                "additionalProperties": false,
            })
        }
    };
    if let Some(description) = &node.description {
        out["description"] = json!(description);
    }
    out
}

fn check_node(node: &SchemaNode, value: &Value, path: &str) -> Result<(), String> {
    let at = |what: &str| {
        let place = if path.is_empty() { "the root" } else { path };
        format!("{place}: expected {what}, got {value}")
    };
    if value.is_null() {
        return if node.nullable {
            Ok(())
        } else {
            Err(at("a value"))
        };
    }
    match &node.kind {
        SchemaKind::String { max_length } => {
            let s = value.as_str().ok_or_else(|| at("a string"))?;
            if let Some(max) = max_length
                && s.chars().count() > *max as usize
            {
                return Err(at(&format!("at most {max} characters")));
            }
        }
        SchemaKind::Enum(options) => {
            let s = value.as_str().ok_or_else(|| at("a string"))?;
            if !options.iter().any(|o| o == s) {
                return Err(at(&format!("one of {options:?}")));
            }
        }
        SchemaKind::Number => {
            if !value.is_number() {
                return Err(at("a number"));
            }
        }
        SchemaKind::Integer => {
            if !(value.is_i64() || value.is_u64()) {
                return Err(at("an integer"));
            }
        }
        SchemaKind::Boolean => {
            if !value.is_boolean() {
                return Err(at("a boolean"));
            }
        }
        SchemaKind::Array { items, max_items } => {
            let list = value.as_array().ok_or_else(|| at("an array"))?;
            if let Some(max) = max_items
                && list.len() > *max as usize
            {
                return Err(at(&format!("at most {max} items")));
            }
            for (i, item) in list.iter().enumerate() {
                check_node(items, item, &format!("{path}/{i}"))?;
            }
        }
        SchemaKind::Object(properties) => {
            let object = value.as_object().ok_or_else(|| at("an object"))?;
            for property in properties {
                let child = format!("{path}/{}", property.name);
                let v = object
                    .get(&property.name)
                    .ok_or_else(|| format!("{child}: missing"))?;
                check_node(&property.schema, v, &child)?;
            }
            if let Some(extra) = object
                .keys()
                .find(|k| !properties.iter().any(|p| &p.name == *k))
            {
                return Err(format!("{path}/{extra}: not in the schema"));
            }
        }
    }
    Ok(())
}

/// A short type notation for prompts: `string`, `integer`, `"a" | "b"`,
/// `boolean or null`, `[string]`, `{"k": string}`.
pub fn describe(node: &SchemaNode) -> String {
    let base = match &node.kind {
        SchemaKind::String { .. } => "string".to_owned(),
        SchemaKind::Enum(options) => options
            .iter()
            .map(|o| Value::from(o.as_str()).to_string())
            .collect::<Vec<_>>()
            .join(" | "),
        SchemaKind::Number => "number".into(),
        SchemaKind::Integer => "integer".into(),
        SchemaKind::Boolean => "boolean".into(),
        SchemaKind::Array { items, .. } => format!("[{}]", describe(items)),
        SchemaKind::Object(properties) => {
            let fields: Vec<String> = properties
                .iter()
                .map(|p| format!("{}: {}", Value::from(p.name.as_str()), describe(&p.schema)))
                .collect();
            format!("{{{}}}", fields.join(", "))
        }
    };
    if node.nullable {
        format!("{base} or null")
    } else {
        base
    }
}

/// Sends a JSON request and reads a JSON reply, all within `timeout`: the
/// non-streaming request the cloud adapters' `complete_json` makes. A
/// non-success status becomes the same error the streaming calls give.
pub(crate) async fn post_json(
    request: reqwest::RequestBuilder,
    timeout: std::time::Duration,
    vendor: &str,
) -> Result<Value, ProviderError> {
    let exchange = async {
        let response = request
            .send()
            .await
            .map_err(|e| super::http::request_error(vendor, &e))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response
            .text()
            .await
            .map_err(|e| super::http::request_error(vendor, &e))?;
        if !status.is_success() {
            return Err(super::http::http_error(
                vendor,
                status.as_u16(),
                status.canonical_reason().unwrap_or(""),
                &body,
                retry_after.as_deref(),
            ));
        }
        serde_json::from_str::<Value>(&body).map_err(|e| {
            ProviderError::BadResponse(format!(
                "{vendor}: the reply is not JSON ({e}): {}",
                super::http::clip(&body, 300)
            ))
        })
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| {
        ProviderError::Unavailable(format!(
            "{vendor}: timed out: no complete reply within {} ms",
            timeout.as_millis()
        ))
    })?
}

/// Fills every missing nullable property with `null`, in `value` and the
/// objects inside it (for answers written by hand, as the scripted LLM's).
pub fn fill_missing_nulls(schema: &ResultSchema, value: &mut Value) {
    fill_node(schema.root(), value);
}

fn fill_node(node: &SchemaNode, value: &mut Value) {
    match (&node.kind, value) {
        (SchemaKind::Object(properties), Value::Object(object)) => {
            for property in properties {
                match object.get_mut(&property.name) {
                    Some(child) => fill_node(&property.schema, child),
                    None if property.schema.nullable => {
                        object.insert(property.name.clone(), Value::Null);
                    }
                    None => {}
                }
            }
        }
        (SchemaKind::Array { items, .. }, Value::Array(list)) => {
            for item in list {
                fill_node(items, item);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn booking() -> Value {
        json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "The caller's name"},
                "party_size": {"type": "integer"},
                "confirmed": {"type": "boolean"},
                "budget": {"type": ["number", "null"]},
                "seating": {"enum": ["inside", "terrace"]},
                "notes": {"type": "string"}
            },
            "required": ["name", "party_size", "confirmed", "budget", "seating"]
        })
    }

    #[test]
    fn optional_properties_become_nullable_and_required() {
        let schema = ResultSchema::parse(&booking()).expect("supported");
        let strict = schema.strict_json();
        assert_eq!(strict["additionalProperties"], json!(false));
        assert_eq!(
            strict["required"],
            json!([
                "budget",
                "confirmed",
                "name",
                "notes",
                "party_size",
                "seating"
            ])
        );
        assert_eq!(
            strict["properties"]["notes"]["type"],
            json!(["string", "null"])
        );
        assert_eq!(strict["properties"]["name"]["type"], json!("string"));
        assert_eq!(
            strict["properties"]["name"]["description"],
            json!("The caller's name")
        );
        assert_eq!(
            strict["properties"]["seating"],
            json!({"type": "string", "enum": ["inside", "terrace"]})
        );
        // The strict form reads back to the same schema.
        assert_eq!(ResultSchema::parse(&strict).expect("strict"), schema);
    }

    #[test]
    fn answers_are_checked_key_by_key() {
        let schema = ResultSchema::parse(&booking()).expect("supported");
        let good = json!({"name": "Ana", "party_size": 4, "confirmed": true, "budget": null,
            "seating": "terrace", "notes": null});
        assert_eq!(schema.check(&good), Ok(()));
        let mut missing = good.clone();
        missing.as_object_mut().expect("object").remove("notes");
        assert_eq!(schema.check(&missing), Err("/notes: missing".into()));
        let mut extra = good.clone();
        extra["tip"] = json!(1);
        assert_eq!(schema.check(&extra), Err("/tip: not in the schema".into()));
        let mut wrong = good.clone();
        wrong["party_size"] = json!(4.5);
        assert!(
            schema
                .check(&wrong)
                .expect_err("4.5")
                .contains("an integer")
        );
        let mut wrong = good.clone();
        wrong["seating"] = json!("roof");
        assert!(schema.check(&wrong).is_err());
        let mut wrong = good;
        wrong["name"] = Value::Null;
        assert!(
            schema.check(&wrong).is_err(),
            "a required string is not nullable"
        );
    }

    #[test]
    fn unsupported_schemas_are_refused_with_their_place() {
        let error = ResultSchema::parse(&json!({"type": "string"})).expect_err("root");
        assert_eq!(error.path, "");
        let error = ResultSchema::parse(&json!({"type": "object", "properties": {
            "a": {"anyOf": [{"type": "string"}, {"type": "integer"}]}}}))
        .expect_err("anyOf");
        assert_eq!(error.path, "/properties/a");
        let error = ResultSchema::parse(&json!({"type": "object", "properties": {},
            "required": ["ghost"]}))
        .expect_err("ghost");
        assert!(error.reason.contains("ghost"));
        assert!(matches!(
            ProviderError::from(error),
            ProviderError::InvalidRequest(_)
        ));
    }

    #[test]
    fn types_read_short_for_prompts() {
        let schema = ResultSchema::parse(&json!({"type": "object", "properties": {
            "day": {"type": "string"}, "kind": {"enum": ["a", "b"]},
            "tags": {"type": "array", "items": {"type": "string"}}},
            "required": ["day", "kind", "tags"]}))
        .expect("supported");
        assert_eq!(
            describe(schema.root()),
            r#"{"day": string, "kind": "a" | "b", "tags": [string]}"#
        );
    }
}
