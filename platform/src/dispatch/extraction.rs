//! Structured results: after a call, the `returns` fields are extracted
//! from the transcript by a model constrained to a JSON schema, checked
//! against the declared types, and retried once on invalid output.

use futures::future::BoxFuture;
use serde_json::{Map, Value, json};

use crate::store::transcripts::Segment;

/// Extracts a call's `returns` fields from its transcript.
pub trait Extractor: Send + Sync + 'static {
    /// The result object (every `returns` key, `null` where the call never
    /// said), or why extraction failed (stored as `result_error`).
    fn extract<'a>(
        &'a self,
        returns: &'a Value,
        transcript: &'a [Segment],
    ) -> BoxFuture<'a, Result<Value, String>>;
}

/// A model that completes a prompt into JSON matching a schema.
pub trait JsonModel: Send + Sync + 'static {
    /// The JSON the model produced for `system` + `user` under `schema`.
    fn complete_json<'a>(
        &'a self,
        system: &'a str,
        user: &'a str,
        schema: &'a Value,
    ) -> BoxFuture<'a, Result<Value, String>>;
}

/// The JSON Schema the model must fill: every field, each nullable.
pub fn result_schema(returns: &Value) -> Value {
    let fields = returns.as_object().cloned().unwrap_or_default();
    let properties: Map<String, Value> = fields
        .iter()
        .map(|(name, kind)| {
            let kind = kind.as_str().unwrap_or("string");
            (name.clone(), json!({"type": [kind, "null"]}))
        })
        .collect();
    json!({
        "type": "object",
        "properties": properties,
        "required": fields.keys().collect::<Vec<_>>(),
        "additionalProperties": false,
    })
}

/// Checks `value` against `returns`: an object with exactly its keys, each
/// of its type or null (missing keys become null). Integers given as whole
/// floats are accepted.
pub fn check_result(returns: &Value, value: &Value) -> Result<Value, String> {
    let fields = returns.as_object().cloned().unwrap_or_default();
    let Some(object) = value.as_object() else {
        return Err(format!("the model answered {value}, not an object"));
    };
    if let Some(extra) = object.keys().find(|k| !fields.contains_key(*k)) {
        return Err(format!("the model answered an unknown field {extra:?}"));
    }
    let mut result = Map::new();
    for (name, kind) in &fields {
        let got = object.get(name).cloned().unwrap_or(Value::Null);
        let ok = match (kind.as_str().unwrap_or("string"), &got) {
            (_, Value::Null) => true,
            ("string", Value::String(_))
            | ("boolean", Value::Bool(_))
            | ("number", Value::Number(_)) => true,
            ("integer", Value::Number(n)) => {
                n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
            }
            _ => false,
        };
        if !ok {
            return Err(format!(
                "field {name:?} should be a {kind} but the model answered {got}"
            ));
        }
        result.insert(name.clone(), got);
    }
    Ok(Value::Object(result))
}

/// The transcript as the model reads it: one `Agent:`/`Caller:` line each.
pub fn transcript_text(segments: &[Segment]) -> String {
    segments
        .iter()
        .map(|s| {
            format!(
                "{}: {}",
                if s.role == "agent" { "Agent" } else { "Caller" },
                s.text.trim()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

const SYSTEM: &str = "You extract facts from a phone call transcript into JSON. Fill each field \
only from what was said in the call; use null for anything the call did not establish. Answer \
with the JSON object only.";

/// Extraction through a [`JsonModel`], retried once on invalid output.
#[derive(Debug)]
pub struct ModelExtractor<M> {
    model: M,
}

impl<M: JsonModel> ModelExtractor<M> {
    /// Extraction with `model`.
    pub fn new(model: M) -> Self {
        ModelExtractor { model }
    }
}

impl<M: JsonModel> Extractor for ModelExtractor<M> {
    fn extract<'a>(
        &'a self,
        returns: &'a Value,
        transcript: &'a [Segment],
    ) -> BoxFuture<'a, Result<Value, String>> {
        Box::pin(async move {
            if transcript.iter().all(|s| s.role != "user") {
                return Err("the transcript is empty: no one spoke to the agent".into());
            }
            let schema = result_schema(returns);
            let fields: Vec<String> = returns
                .as_object()
                .map(|f| {
                    f.iter()
                        .map(|(k, v)| format!("- {k} ({})", v.as_str().unwrap_or("string")))
                        .collect()
                })
                .unwrap_or_default();
            let user = format!(
                "Fields:\n{}\n\nTranscript:\n{}\n\nJSON:",
                fields.join("\n"),
                transcript_text(transcript)
            );
            let mut last_error = String::new();
            for _attempt in 0..2 {
                match self.model.complete_json(SYSTEM, &user, &schema).await {
                    Ok(value) => match check_result(returns, &value) {
                        Ok(result) => return Ok(result),
                        Err(err) => last_error = format!("invalid model output: {err}"),
                    },
                    Err(err) => last_error = format!("the model failed: {err}"),
                }
            }
            Err(last_error)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Timestamp;
    use std::sync::Mutex;

    fn segment(role: &str, text: &str) -> Segment {
        Segment {
            sequence_no: 0,
            role: role.into(),
            text: text.into(),
            started_at: Timestamp(0),
            ended_at: None,
            duration_ms: None,
            source: "asr".into(),
        }
    }

    struct Answers(Mutex<Vec<Result<Value, String>>>);

    impl JsonModel for Answers {
        fn complete_json<'a>(
            &'a self,
            _: &'a str,
            user: &'a str,
            schema: &'a Value,
        ) -> BoxFuture<'a, Result<Value, String>> {
            assert!(user.contains("Caller: yes I'll be there"));
            assert_eq!(schema["required"], json!(["confirmed", "reschedule_to"]));
            let next = self.0.lock().expect("lock").remove(0);
            Box::pin(async move { next })
        }
    }

    #[tokio::test]
    async fn a_bad_answer_is_retried_once_then_reported() {
        let returns = json!({"confirmed": "boolean", "reschedule_to": "string"});
        let transcript = [
            segment("agent", "Can you come?"),
            segment("user", "yes I'll be there"),
        ];
        let good = ModelExtractor::new(Answers(Mutex::new(vec![
            Ok(json!({"confirmed": "yes"})),
            Ok(json!({"confirmed": true, "reschedule_to": null})),
        ])));
        assert_eq!(
            good.extract(&returns, &transcript).await,
            Ok(json!({"confirmed": true, "reschedule_to": null}))
        );
        let bad = ModelExtractor::new(Answers(Mutex::new(vec![
            Ok(json!([1])),
            Err("timeout".into()),
        ])));
        let err = bad.extract(&returns, &transcript).await.expect_err("fails");
        assert!(err.contains("timeout"), "{err}");
        let silent = ModelExtractor::new(Answers(Mutex::new(vec![])));
        let err = silent
            .extract(&returns, &[segment("agent", "Hello?")])
            .await
            .expect_err("fails");
        assert!(err.contains("empty"), "{err}");
    }

    #[test]
    fn results_are_checked_against_the_declared_types() {
        let returns = json!({"n": "integer", "ok": "boolean", "x": "number"});
        assert_eq!(
            check_result(&returns, &json!({"n": 3.0, "ok": false})),
            Ok(json!({"n": 3.0, "ok": false, "x": null}))
        );
        assert!(check_result(&returns, &json!({"n": 3.5})).is_err());
        assert!(check_result(&returns, &json!({"ok": "no"})).is_err());
        assert!(check_result(&returns, &json!({"other": 1})).is_err());
    }
}
