//! The `transfer_call` built-in: where an agent may transfer its calls.
//!
//! The destinations are configured, never chosen freely by the model (a
//! prompt must not be able to send a caller to any number): either one,
//! `"config": {"to": "+14155550100"}`, which the model calls with no
//! arguments, or several by name, `"config": {"destinations": {"sales":
//! "+14155550100", "front desk": "sip:desk@pbx.example"}}`, which the
//! model picks from with `{"destination": "sales"}`. A destination is a
//! phone number (sent to the caller's trunk or PBX) or a `sip:`/`tel:` URI.

use serde_json::{Value, json};

use super::BuiltinTool;
use crate::transport::sip::refer::check_destination;

/// The configured destinations of a `transfer_call`: (name, destination),
/// or why the configuration is unusable.
pub fn destinations(tool: &BuiltinTool) -> Result<Vec<(String, String)>, String> {
    let config = tool.config.as_ref().unwrap_or(&Value::Null);
    let found: Vec<(String, String)> = match (config.get("to"), config.get("destinations")) {
        (Some(Value::String(to)), None) => vec![(String::new(), to.clone())],
        (None, Some(Value::Object(named))) if !named.is_empty() => named
            .iter()
            .map(|(name, to)| match to {
                Value::String(to) => Ok((name.clone(), to.clone())),
                _ => Err(format!("destination {name:?} must be a string")),
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(
                "needs \"config\": {\"to\": \"<number or sip: URI>\"} or {\"destinations\": {\"<name>\": \"<number or sip: URI>\"}}"
                    .into(),
            );
        }
    };
    for (_, to) in &found {
        check_destination(to)?;
    }
    Ok(found)
}

/// The destination the model's `arguments` pick, or why none.
pub fn pick(tool: &BuiltinTool, arguments: &Value) -> Result<String, String> {
    let destinations = destinations(tool)?;
    if let [(name, to)] = destinations.as_slice()
        && name.is_empty()
    {
        return Ok(to.clone());
    }
    let wanted = arguments
        .get("destination")
        .and_then(Value::as_str)
        .ok_or("transfer_call needs a \"destination\" argument")?;
    destinations
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(wanted.trim()))
        .map(|(_, to)| to.clone())
        .ok_or_else(|| {
            let names: Vec<&str> = destinations.iter().map(|(name, _)| name.as_str()).collect();
            format!("unknown destination {wanted:?}: choose one of {names:?}")
        })
}

/// The description and arguments the model sees, unless the tool has its own.
pub fn fill_schema(tool: &mut BuiltinTool) {
    if tool.description.is_empty() {
        tool.description = "Transfer the caller to a person or department (blind transfer). \
             Tell the caller first that you are transferring them. The call with you ends \
             when the transfer succeeds; if it fails, you get the reason and stay on the call."
            .into();
    }
    if tool.parameters != super::empty_parameters() {
        return;
    }
    let Ok(destinations) = destinations(tool) else {
        return;
    };
    if destinations.iter().all(|(name, _)| name.is_empty()) {
        return;
    }
    let names: Vec<&str> = destinations.iter().map(|(name, _)| name.as_str()).collect();
    tool.parameters = json!({
        "type": "object",
        "properties": {"destination": {"type": "string", "enum": names, "description": "Who to transfer the caller to"}},
        "required": ["destination"],
        "additionalProperties": false,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(config: Value) -> BuiltinTool {
        BuiltinTool {
            name: "transfer_call".into(),
            description: String::new(),
            policy: Default::default(),
            builtin: None,
            parameters: super::super::empty_parameters(),
            config: Some(config),
        }
    }

    #[test]
    fn one_destination_needs_no_argument_several_are_picked_by_name() {
        let single = tool(json!({"to": "+14155550100"}));
        assert_eq!(pick(&single, &json!({})), Ok("+14155550100".into()));
        let mut several = tool(
            json!({"destinations": {"sales": "+14155550100", "Front desk": "sip:desk@pbx.example"}}),
        );
        assert_eq!(
            pick(&several, &json!({"destination": "front desk"})),
            Ok("sip:desk@pbx.example".into())
        );
        let unknown = pick(&several, &json!({"destination": "billing"})).expect_err("unknown");
        assert!(unknown.contains("sales"), "{unknown}");
        assert!(pick(&several, &json!({})).is_err());
        fill_schema(&mut several);
        assert_eq!(
            several.parameters["properties"]["destination"]["enum"],
            json!(["Front desk", "sales"])
        );
        assert!(!several.description.is_empty());
    }

    #[test]
    fn unusable_configurations_are_refused_with_the_reason() {
        for config in [
            json!(null),
            json!({}),
            json!({"to": 5}),
            json!({"destinations": {}}),
            json!({"destinations": {"a": 1}}),
            json!({"to": "sip:x@y>\r\nEvil: 1"}),
            json!({"to": "+1", "destinations": {"a": "+14155550100"}}),
        ] {
            assert!(destinations(&tool(config.clone())).is_err(), "{config}");
        }
    }
}
