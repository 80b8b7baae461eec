//! Field validation shared by the API's resources. Each check returns the
//! message the client sees in `{"error": ...}`.

use callingbox_engine::tools::{BUILTINS, BuiltinTool, MAX_TOOLS, TRANSFER_CALL, transfer};
use serde_json::{Map, Value};

/// Most fields a `returns` schema may have.
pub const MAX_RETURNS_FIELDS: usize = 50;
/// The `returns` field types extraction can produce.
pub const RETURNS_TYPES: [&str; 4] = ["string", "number", "integer", "boolean"];
/// The built-in tools the engine runs.
pub const BUILTIN_TOOLS: [&str; 3] = BUILTINS;
/// The languages calls can be held in (BCP-47 primary subtags).
pub const LANGUAGES: [&str; 2] = ["en", "es"];
/// What an agent does when a machine answers.
pub const VOICEMAIL_ACTIONS: [&str; 2] = ["hangup", "leave_message"];

/// `value` is an E.164 number (the engine's rule: `+`, 1-15 digits, the
/// first not 0).
pub fn e164(field: &str, value: &str) -> Result<(), String> {
    if callingbox_engine::transport::sip::carrier::is_e164(value) {
        Ok(())
    } else {
        Err(format!(
            "{field} must be an E.164 phone number like +15551234567, got {value:?}"
        ))
    }
}

/// A non-empty string of at most `max` characters.
pub fn text(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err(format!("{field} must not be empty"));
    }
    if value.chars().count() > max {
        return Err(format!("{field} is longer than {max} characters"));
    }
    Ok(())
}

/// A string of at most `max` characters (may be empty).
pub fn max_len(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.chars().count() > max {
        return Err(format!("{field} is longer than {max} characters"));
    }
    Ok(())
}

/// An absolute http(s) URL.
pub fn http_url(field: &str, value: &str) -> Result<(), String> {
    let parsed = url::Url::parse(value).map_err(|err| format!("{field} is not a URL: {err}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!(
            "{field} must be an http or https URL, got {value:?}"
        ));
    }
    Ok(())
}

/// A BCP-47 tag whose language we support (`en`, `en-US`, `es-MX`, ...).
pub fn language(field: &str, value: &str) -> Result<(), String> {
    let mut parts = value.split('-');
    let primary = parts.next().unwrap_or("").to_ascii_lowercase();
    let well_formed = (2..=3).contains(&primary.len())
        && primary.bytes().all(|b| b.is_ascii_alphabetic())
        && parts
            .all(|p| (2..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()));
    if !well_formed {
        return Err(format!(
            "{field} must be a BCP-47 language tag like \"en\" or \"es-MX\", got {value:?}"
        ));
    }
    if !LANGUAGES.contains(&primary.as_str()) {
        return Err(format!(
            "{field} {value:?} is not supported: use one of {}",
            LANGUAGES.join(", ")
        ));
    }
    Ok(())
}

/// One of `allowed`.
pub fn one_of(field: &str, value: &str, allowed: &[&str]) -> Result<(), String> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "{field} must be one of {}, got {value:?}",
            allowed.join(", ")
        ))
    }
}

/// A `returns` schema: a flat object of field name -> type name.
pub fn returns(field: &str, value: &Value) -> Result<(), String> {
    let Some(fields) = value.as_object() else {
        return Err(format!(
            "{field} must be an object of field name to type, like {{\"confirmed\": \"boolean\"}}"
        ));
    };
    if fields.len() > MAX_RETURNS_FIELDS {
        return Err(format!("{field} has more than {MAX_RETURNS_FIELDS} fields"));
    }
    for (name, kind) in fields {
        identifier(&format!("{field} field name"), name)?;
        match kind.as_str() {
            Some(kind) if RETURNS_TYPES.contains(&kind) => {}
            _ => {
                return Err(format!(
                    "{field}.{name} must be one of {}, got {kind}",
                    RETURNS_TYPES.map(|t| format!("\"{t}\"")).join(", ")
                ));
            }
        }
    }
    Ok(())
}

fn identifier(field: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{field} {name:?} must be 1-64 letters, digits, '_' or '-'"
        ))
    }
}

/// In-call tools: at most [`MAX_TOOLS`], unique names, valid definitions.
pub fn tools(field: &str, value: &Value) -> Result<(), String> {
    let Some(list) = value.as_array() else {
        return Err(format!("{field} must be an array of tool definitions"));
    };
    if list.len() > MAX_TOOLS {
        return Err(format!(
            "{field} has {} tools; at most {MAX_TOOLS} are allowed",
            list.len()
        ));
    }
    let mut names = std::collections::HashSet::new();
    for (index, tool) in list.iter().enumerate() {
        let at = format!("{field}[{index}]");
        let Some(tool) = tool.as_object() else {
            return Err(format!("{at} must be an object"));
        };
        let name = str_field(tool, &at, "name")?;
        identifier(&format!("{at}.name"), name)?;
        if !names.insert(name.to_owned()) {
            return Err(format!("{at}.name {name:?} is used by another tool"));
        }
        if let Some(description) = tool.get("description")
            && !description.is_string()
        {
            return Err(format!("{at}.description must be a string"));
        }
        if let Some(policy) = tool.get("policy") {
            let policy = policy.as_str().unwrap_or("");
            one_of(
                &format!("{at}.policy"),
                policy,
                &["read", "confirm_first_write"],
            )?;
        }
        let kind = str_field(tool, &at, "type")?;
        match kind {
            "http" => {
                http_url(&format!("{at}.url"), str_field(tool, &at, "url")?)?;
                if let Some(headers) = tool.get("headers") {
                    let ok = headers
                        .as_object()
                        .is_some_and(|h| h.values().all(Value::is_string));
                    if !ok {
                        return Err(format!("{at}.headers must be an object of strings"));
                    }
                }
                if let Some(timeout) = tool.get("timeout_ms") {
                    let ok = timeout.as_u64().is_some_and(|t| (1..=30_000).contains(&t));
                    if !ok {
                        return Err(format!(
                            "{at}.timeout_ms must be an integer from 1 to 30000"
                        ));
                    }
                }
            }
            "builtin" => {
                let builtin = match tool.get("builtin") {
                    Some(b) => b
                        .as_str()
                        .ok_or_else(|| format!("{at}.builtin must be a string"))?,
                    None => name,
                };
                one_of(&format!("{at}.builtin"), builtin, &BUILTIN_TOOLS)?;
                if builtin == TRANSFER_CALL {
                    let parsed: BuiltinTool = serde_json::from_value(Value::Object(tool.clone()))
                        .map_err(|e| format!("{at}: {e}"))?;
                    transfer::destinations(&parsed).map_err(|e| format!("{at}.config {e}"))?;
                }
            }
            other => {
                return Err(format!(
                    "{at}.type must be \"http\" or \"builtin\", got {other:?}"
                ));
            }
        }
        match tool.get("parameters") {
            Some(schema) => json_schema(&format!("{at}.parameters"), schema, true)?,
            None if kind == "http" => {
                return Err(format!(
                    "{at}.parameters is required (a JSON Schema object)"
                ));
            }
            None => {}
        }
    }
    Ok(())
}

fn str_field<'a>(object: &'a Map<String, Value>, at: &str, key: &str) -> Result<&'a str, String> {
    match object.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(format!("{at}.{key} must be a string")),
        None => Err(format!("{at}.{key} is required")),
    }
}

const SCHEMA_TYPES: [&str; 7] = [
    "string", "number", "integer", "boolean", "object", "array", "null",
];

/// A JSON Schema as tools' parameters use it; `root` must be an object schema.
pub fn json_schema(at: &str, schema: &Value, root: bool) -> Result<(), String> {
    let Some(schema) = schema.as_object() else {
        return Err(format!("{at} must be a JSON Schema object"));
    };
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        Some(_) => return Err(format!("{at}.type must be a string or an array of strings")),
        None if root => return Err(format!("{at}.type must be \"object\"")),
        None => Vec::new(),
    };
    for t in &types {
        one_of(&format!("{at}.type"), t, &SCHEMA_TYPES)?;
    }
    if root && types != ["object"] {
        return Err(format!("{at}.type must be \"object\""));
    }
    if let Some(properties) = schema.get("properties") {
        let Some(properties) = properties.as_object() else {
            return Err(format!("{at}.properties must be an object"));
        };
        for (name, property) in properties {
            json_schema(&format!("{at}.properties.{name}"), property, false)?;
        }
        if let Some(required) = schema.get("required") {
            let Some(required) = required.as_array() else {
                return Err(format!("{at}.required must be an array of property names"));
            };
            for name in required {
                match name.as_str() {
                    Some(name) if properties.contains_key(name) => {}
                    _ => {
                        return Err(format!(
                            "{at}.required names {name}, which is not in properties"
                        ));
                    }
                }
            }
        }
    } else if schema
        .get("required")
        .is_some_and(|r| r.as_array().is_some_and(|r| !r.is_empty()))
    {
        return Err(format!("{at}.required names properties but there are none"));
    }
    if let Some(items) = schema.get("items") {
        json_schema(&format!("{at}.items"), items, false)?;
    }
    if let Some(values) = schema.get("enum")
        && !values.is_array()
    {
        return Err(format!("{at}.enum must be an array"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn e164_numbers() {
        assert!(e164("to", "+15551234567").is_ok());
        for bad in [
            "15551234567",
            "+0555",
            "+",
            "+1555123456789012",
            "+1 555",
            "",
        ] {
            assert!(e164("to", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn languages_are_bcp47_and_supported() {
        for ok in ["en", "en-US", "es", "es-MX", "EN"] {
            assert!(language("language", ok).is_ok(), "{ok}");
        }
        assert!(
            language("language", "fr")
                .expect_err("refused")
                .contains("not supported")
        );
        assert!(
            language("language", "english!")
                .expect_err("refused")
                .contains("BCP-47")
        );
    }

    #[test]
    fn returns_schemas() {
        assert!(
            returns(
                "returns",
                &json!({"confirmed": "boolean", "when": "string"})
            )
            .is_ok()
        );
        assert!(
            returns("returns", &json!({"x": "date"}))
                .expect_err("refused")
                .contains("returns.x")
        );
        assert!(returns("returns", &json!(["x"])).is_err());
        assert!(returns("returns", &json!({"bad name": "string"})).is_err());
    }

    #[test]
    fn tools_are_checked_field_by_field() {
        let lookup = json!({
            "type": "http", "name": "lookup", "url": "https://example.com/x",
            "parameters": {"type": "object", "properties": {"id": {"type": "string"}},
                           "required": ["id"], "additionalProperties": false}
        });
        let end = json!({"type": "builtin", "name": "end_call", "parameters": {"type": "object", "properties": {}}});
        assert!(tools("tools", &json!([lookup, end])).is_ok());
        let too_many: Vec<Value> = (0..17)
            .map(|i| json!({"type": "builtin", "name": format!("t{i}"), "builtin": "end_call"}))
            .collect();
        assert!(
            tools("tools", &json!(too_many))
                .expect_err("refused")
                .contains("at most 16")
        );
        let bad_required = json!([{
            "type": "http", "name": "x", "url": "https://e.com",
            "parameters": {"type": "object", "properties": {}, "required": ["id"]}
        }]);
        assert!(
            tools("tools", &bad_required)
                .expect_err("refused")
                .contains("required")
        );
        let dup = json!([end, end]);
        assert!(
            tools("tools", &dup)
                .expect_err("refused")
                .contains("used by another")
        );
        let ftp = json!([{"type": "http", "name": "x", "url": "ftp://e.com", "parameters": {"type": "object"}}]);
        assert!(
            tools("tools", &ftp)
                .expect_err("refused")
                .contains("http or https")
        );
        let unknown = json!([{"type": "builtin", "name": "fly"}]);
        assert!(
            tools("tools", &unknown)
                .expect_err("refused")
                .contains("builtin")
        );
        let transfer = json!([{"type": "builtin", "name": "transfer_call",
                                "config": {"destinations": {"sales": "+14155550100"}}}]);
        assert!(tools("tools", &transfer).is_ok());
        let nowhere = json!([{"type": "builtin", "name": "transfer_call"}]);
        assert!(
            tools("tools", &nowhere)
                .expect_err("refused")
                .contains("tools[0].config needs")
        );
        let injected = json!([{"type": "builtin", "name": "transfer_call",
                                "config": {"to": "sip:a@b>\r\nX: 1"}}]);
        assert!(
            tools("tools", &injected)
                .expect_err("refused")
                .contains("not a phone number")
        );
    }
}
