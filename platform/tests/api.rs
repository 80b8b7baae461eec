//! The REST API as a client sees it, over real HTTP, on SQLite and (when
//! available) PostgreSQL.

mod common;

use common::{TestServer, assert_error, database_urls};
use serde_json::{Value, json};

async fn servers() -> Vec<TestServer> {
    let mut servers = Vec::new();
    for (backend, url) in database_urls().await {
        servers.push(TestServer::start(backend, &url).await);
    }
    servers
}

fn outbound_agent(number_ids: &[&str]) -> Value {
    json!({
        "name": "Appointment reminders",
        "type": "outbound",
        "persona": "You are Sam from Acme Dental.",
        "instructions": "Confirm tomorrow's appointment.",
        "returns": {"confirmed": "boolean", "reschedule_to": "string"},
        "tools": [{"type": "builtin", "name": "end_call", "description": "Hang up",
                   "parameters": {"type": "object", "properties": {}, "required": [], "additionalProperties": false}}],
        "number_ids": number_ids,
    })
}

#[tokio::test]
async fn requests_without_a_valid_key_are_refused() {
    for s in servers().await {
        let url = format!("{}/v1/calls", s.base);
        let bare = s.http.get(&url).send().await.expect("answers");
        assert_eq!(bare.status(), 401, "{}", s.backend);
        let body: Value = bare.json().await.expect("json");
        assert!(
            body["error"]
                .as_str()
                .expect("envelope")
                .contains("missing API key")
        );
        assert_error(
            &s.call_as("sk_live_nope", "GET", "/v1/calls", None).await,
            401,
            "invalid",
        );
        assert_error(
            &s.call_as("hello", "GET", "/v1/calls", None).await,
            401,
            "invalid API key",
        );
        let (status, _) = s.call("GET", "/v1/calls", None).await;
        assert_eq!(status, 200);
    }
}

#[tokio::test]
async fn a_revoked_or_expired_key_stops_working_at_once() {
    use callingbox::clock::{Clock, MonotonicClock, Timestamp};
    use callingbox::store::keys;
    for s in servers().await {
        let now = MonotonicClock::default().now();
        let mut tx = s.store.begin().await.expect("tx");
        let (record, key) = keys::create(&mut tx, &s.org_id, "temp", None, now)
            .await
            .expect("key");
        let (_, expired) = keys::create(&mut tx, &s.org_id, "old", Some(Timestamp(now.0 - 1)), now)
            .await
            .expect("key");
        tx.commit().await.expect("commit");
        assert_eq!(s.call_as(&key, "GET", "/v1/agents", None).await.0, 200);
        assert_error(
            &s.call_as(&expired, "GET", "/v1/agents", None).await,
            401,
            "expired",
        );
        let mut tx = s.store.begin().await.expect("tx");
        assert!(
            keys::revoke(&mut tx, &record.id, now)
                .await
                .expect("revokes")
        );
        tx.commit().await.expect("commit");
        assert_error(
            &s.call_as(&key, "GET", "/v1/agents", None).await,
            401,
            "revoked",
        );
        // The stored record has only a hash.
        let listed = keys::list(&s.store, Some(&s.org_id)).await.expect("list");
        assert!(
            listed
                .iter()
                .all(|k| !key.contains(&k.id) && key.starts_with(&k.prefix) || k.id != record.id)
        );
    }
}

#[tokio::test]
async fn numbers_are_searched_bought_charged_and_listed_newest_first() {
    for s in servers().await {
        let (status, found) = s
            .call("GET", "/v1/numbers/available?area_code=212&limit=3", None)
            .await;
        assert_eq!(status, 200, "{found}");
        let found = found.as_array().expect("bare array");
        assert_eq!(found.len(), 3);
        assert_eq!(found[0]["country_code"], "US");
        assert_eq!(found[0]["monthly_cost_cents"], 100);
        let bought = s.buy_numbers("212", 3).await;
        // Bought numbers are no longer offered.
        let (_, again) = s
            .call("GET", "/v1/numbers/available?area_code=212&limit=3", None)
            .await;
        assert!(
            again
                .as_array()
                .expect("array")
                .iter()
                .all(|o| bought.iter().all(|(_, e)| o["phone_number"] != e.as_str()))
        );
        assert_error(
            &s.call(
                "POST",
                "/v1/numbers/purchase",
                Some(json!({"phone_number": bought[0].1})),
            )
            .await,
            409,
            "already taken",
        );
        assert_error(
            &s.call(
                "POST",
                "/v1/numbers/purchase",
                Some(json!({"phone_number": "+14155551234"})),
            )
            .await,
            400,
            "not available",
        );
        let (status, page) = s.call("GET", "/v1/numbers?limit=2", None).await;
        assert_eq!(status, 200);
        let ids: Vec<&str> = page["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|n| n["id"].as_str().expect("id"))
            .collect();
        assert_eq!(
            ids,
            [bought[2].0.as_str(), bought[1].0.as_str()],
            "newest first"
        );
        assert_eq!(page["has_more"], true);
        let (_, next) = s
            .call(
                "GET",
                &format!("/v1/numbers?limit=2&starting_after={}", ids[1]),
                None,
            )
            .await;
        assert_eq!(next["data"][0]["id"], bought[0].0.as_str());
        assert_eq!(next["has_more"], false);
        let (_, back) = s
            .call(
                "GET",
                &format!("/v1/numbers?limit=5&ending_before={}", bought[0].0),
                None,
            )
            .await;
        let back: Vec<&str> = back["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|n| n["id"].as_str().expect("id"))
            .collect();
        assert_eq!(back, [bought[2].0.as_str(), bought[1].0.as_str()]);
        // Three numbers at $1 each came off the starting credit.
        let org = callingbox::store::orgs::get(
            &mut s.store.pool().acquire().await.expect("conn"),
            &s.org_id,
        )
        .await
        .expect("org")
        .expect("exists");
        assert_eq!(
            org.balance_milli_cents,
            s.pricing.starting_credit_milli_cents - 3 * 100_000,
            "{}",
            s.backend
        );
        assert_error(
            &s.call("GET", "/v1/numbers?limit=0", None).await,
            400,
            "limit",
        );
        assert_error(
            &s.call("GET", "/v1/numbers?limit=abc", None).await,
            400,
            "limit",
        );
        assert_error(
            &s.call("GET", "/v1/numbers/available?country_code=FR", None)
                .await,
            400,
            "only US",
        );
    }
}

#[tokio::test]
async fn agents_are_created_read_updated_and_archived() {
    for s in servers().await {
        let numbers = s.buy_numbers("415", 2).await;
        let (status, agent) = s
            .call("POST", "/v1/agents", Some(outbound_agent(&[&numbers[0].0])))
            .await;
        assert_eq!(status, 201, "{agent}");
        let id = agent["id"].as_str().expect("id").to_owned();
        assert_eq!(agent["type"], "outbound");
        assert_eq!(agent["language"], "en");
        assert_eq!(agent["voicemail_action"], "hangup");
        assert_eq!(
            agent["primary_number_id"],
            numbers[0].0.as_str(),
            "first number is primary"
        );
        assert_eq!(agent["numbers"][0]["e164"], numbers[0].1.as_str());
        assert!(agent["archived_at"].is_null());

        let (_, got) = s.call("GET", &format!("/v1/agents/{id}"), None).await;
        assert_eq!(got, agent);

        // PATCH changes only what is sent; null clears a nullable field.
        let (status, patched) = s
            .call(
                "PATCH",
                &format!("/v1/agents/{id}"),
                Some(json!({"instructions": "New task.", "persona": null})),
            )
            .await;
        assert_eq!(status, 200, "{patched}");
        assert_eq!(patched["instructions"], "New task.");
        assert!(patched["persona"].is_null());
        assert_eq!(patched["name"], agent["name"]);
        assert_error(
            &s.call(
                "PATCH",
                &format!("/v1/agents/{id}"),
                Some(json!({"type": "inbound"})),
            )
            .await,
            400,
            "type cannot change",
        );
        assert_error(
            &s.call(
                "PATCH",
                &format!("/v1/agents/{id}"),
                Some(json!({"name": null})),
            )
            .await,
            400,
            "cannot be null",
        );
        assert_error(
            &s.call(
                "PATCH",
                &format!("/v1/agents/{id}"),
                Some(json!({"colour": "red"})),
            )
            .await,
            400,
            "unknown field",
        );
        assert_error(
            &s.call(
                "PATCH",
                &format!("/v1/agents/{id}"),
                Some(json!({"language": "fr"})),
            )
            .await,
            400,
            "not supported",
        );

        // Attach, primary, detach.
        let (status, attached) = s
            .call(
                "POST",
                &format!("/v1/agents/{id}/numbers"),
                Some(json!({"number_id": numbers[1].0, "set_as_primary": true})),
            )
            .await;
        assert_eq!(status, 200, "{attached}");
        assert_eq!(attached["numbers"].as_array().expect("numbers").len(), 2);
        assert_eq!(attached["primary_number_id"], numbers[1].0.as_str());
        let (_, primary) = s
            .call(
                "PUT",
                &format!("/v1/agents/{id}/primary-number"),
                Some(json!({"number_id": numbers[0].0})),
            )
            .await;
        assert_eq!(primary["primary_number_id"], numbers[0].0.as_str());
        let (_, detached) = s
            .call(
                "DELETE",
                &format!("/v1/agents/{id}/numbers/{}", numbers[0].0),
                None,
            )
            .await;
        assert_eq!(
            detached["primary_number_id"],
            numbers[1].0.as_str(),
            "the next number is promoted"
        );
        assert_error(
            &s.call(
                "DELETE",
                &format!("/v1/agents/{id}/numbers/{}", numbers[0].0),
                None,
            )
            .await,
            404,
            "not attached",
        );
        assert_error(
            &s.call(
                "PUT",
                &format!("/v1/agents/{id}/primary-number"),
                Some(json!({"number_id": numbers[0].0})),
            )
            .await,
            400,
            "not attached",
        );
        // The number shows the outbound agent.
        let (_, number) = s
            .call("GET", &format!("/v1/numbers/{}", numbers[1].0), None)
            .await;
        assert_eq!(number["outbound_agent_ids"], json!([id]));

        // Archive: kept, out of the list, frozen.
        let (status, archived) = s.call("DELETE", &format!("/v1/agents/{id}"), None).await;
        assert_eq!(status, 200);
        assert!(archived["archived_at"].is_string());
        assert_eq!(archived["numbers"], json!([]));
        let (_, list) = s.call("GET", "/v1/agents", None).await;
        assert_eq!(list["data"], json!([]));
        let (_, all) = s
            .call("GET", "/v1/agents?include_archived=true", None)
            .await;
        assert_eq!(all["data"][0]["id"], id.as_str());
        assert_error(
            &s.call(
                "PATCH",
                &format!("/v1/agents/{id}"),
                Some(json!({"name": "x"})),
            )
            .await,
            400,
            "archived",
        );
    }
}

#[tokio::test]
async fn a_number_has_at_most_one_inbound_agent() {
    for s in servers().await {
        let numbers = s.buy_numbers("646", 1).await;
        let inbound = |name: &str| json!({"name": name, "type": "inbound", "instructions": "Answer.", "number_ids": [numbers[0].0]});
        let (status, first) = s
            .call("POST", "/v1/agents", Some(inbound("front desk")))
            .await;
        assert_eq!(status, 201, "{first}");
        let second = s
            .call("POST", "/v1/agents", Some(inbound("night desk")))
            .await;
        assert_error(&second, 409, "at most one inbound agent");
        // The failed create left nothing behind.
        let (_, list) = s.call("GET", "/v1/agents", None).await;
        assert_eq!(
            list["data"].as_array().expect("data").len(),
            1,
            "{}",
            s.backend
        );
        let (_, number) = s
            .call("GET", &format!("/v1/numbers/{}", numbers[0].0), None)
            .await;
        assert_eq!(number["inbound_agent_id"], first["id"]);
        // Outbound agents may share it as caller ID.
        let (status, _) = s
            .call("POST", "/v1/agents", Some(outbound_agent(&[&numbers[0].0])))
            .await;
        assert_eq!(status, 201);
        // Detaching frees it for another inbound agent.
        let first_id = first["id"].as_str().expect("id");
        s.call(
            "DELETE",
            &format!("/v1/agents/{first_id}/numbers/{}", numbers[0].0),
            None,
        )
        .await;
        let (status, _) = s
            .call("POST", "/v1/agents", Some(inbound("night desk")))
            .await;
        assert_eq!(status, 201);
    }
}

#[tokio::test]
async fn agent_fields_are_validated() {
    for s in servers().await {
        let cases = [
            (json!({"type": "outbound"}), "missing field `name`"),
            (
                json!({"name": "x", "type": "sideways"}),
                "type must be one of",
            ),
            (
                json!({"name": "x", "type": "outbound", "returns": {"when": "date"}}),
                "returns.when",
            ),
            (
                json!({"name": "x", "type": "outbound", "voicemail_action": "sing"}),
                "voicemail_action",
            ),
            (
                json!({"name": "x", "type": "outbound", "webhook_url": "ftp://x"}),
                "http or https",
            ),
            (
                json!({"name": "x", "type": "outbound", "tools": [{"type": "http", "name": "t", "url": "https://e.com"}]}),
                "parameters is required",
            ),
            (
                json!({"name": "x", "type": "outbound", "number_ids": ["not-an-id"]}),
                "not found",
            ),
            (
                json!({"name": "x", "type": "outbound", "primary_number_id": "7f0c3c56-8a6e-4c39-9d7f-1f1f1f1f1f1f"}),
                "one of number_ids",
            ),
            (
                json!({"name": "x", "type": "outbound", "extra": 1}),
                "unknown field",
            ),
            (json!({"name": 5, "type": "outbound"}), "invalid type"),
        ];
        for (body, needle) in cases {
            assert_error(
                &s.call("POST", "/v1/agents", Some(body.clone())).await,
                400,
                needle,
            );
        }
        let tools: Vec<Value> = (0..17)
            .map(|i| json!({"type": "builtin", "name": format!("t{i}"), "builtin": "end_call"}))
            .collect();
        assert_error(
            &s.call(
                "POST",
                "/v1/agents",
                Some(json!({"name": "x", "type": "outbound", "tools": tools})),
            )
            .await,
            400,
            "at most 16",
        );
        let (_, list) = s.call("GET", "/v1/agents", None).await;
        assert_eq!(list["data"], json!([]), "no partial writes");
    }
}

#[tokio::test]
async fn dispatching_holds_credits_and_records_a_queued_call() {
    for s in servers().await {
        let numbers = s.buy_numbers("415", 2).await;
        let (_, agent) = s
            .call("POST", "/v1/agents", Some(outbound_agent(&[&numbers[0].0])))
            .await;
        let agent_id = agent["id"].as_str().expect("id");
        let (status, call) = s
            .call(
                "POST",
                "/v1/calls",
                Some(json!({
                    "agent_id": agent_id, "to": "+14155550199",
                    "context": {"patient": "Ana"}, "metadata": {"ticket": "T-1"},
                    "instructions": "Only confirm."
                })),
            )
            .await;
        assert_eq!(status, 201, "{call}");
        assert_eq!(call["status"], "queued");
        assert_eq!(call["direction"], "outbound");
        assert_eq!(
            call["from_number"],
            numbers[0].1.as_str(),
            "the primary number"
        );
        assert_eq!(call["instructions"], "Only confirm.");
        assert_eq!(
            call["prompt"],
            "You are Sam from Acme Dental.\n\nOnly confirm."
        );
        assert_eq!(call["returns"], agent["returns"]);
        assert_eq!(call["reservation_status"], "reserved");
        assert_eq!(call["result_status"], "pending");
        assert_eq!(call["metadata"]["ticket"], "T-1");
        assert_eq!(
            call["metadata"]["language"], "en",
            "SDK 0.1.0 reads it there"
        );
        assert!(call["result"].is_null());
        let id = call["id"].as_str().expect("id");
        assert_eq!(
            s.launcher.launched.lock().expect("lock").as_slice(),
            [id.to_owned()]
        );
        let (_, got) = s.call("GET", &format!("/v1/calls/{id}"), None).await;
        assert_eq!(got["id"], id);
        let (_, transcript) = s
            .call("GET", &format!("/v1/calls/{id}/transcript"), None)
            .await;
        assert_eq!(transcript, json!({"call_id": id, "segments": []}));

        let bad = [
            (json!({"agent_id": agent_id, "to": "555"}), "E.164"),
            (
                json!({"agent_id": agent_id, "to": "+14155550199", "from_number": numbers[1].1}),
                "not attached",
            ),
            (
                json!({"agent_id": agent_id, "to": "+14155550199", "voice": "x"}),
                "set on the agent",
            ),
            (
                json!({"agent_id": agent_id, "to": "+14155550199", "context": "x"}),
                "JSON object",
            ),
            (
                json!({"agent_id": "1f0c3c56-8a6e-4c39-9d7f-1f1f1f1f1f1f", "to": "+14155550199"}),
                "not found",
            ),
            (
                json!({"agent_id": agent_id, "to": "+14155550199", "surprise": true}),
                "unknown field",
            ),
        ];
        for (body, needle) in bad {
            assert_error(&s.call("POST", "/v1/calls", Some(body)).await, 400, needle);
        }
        // Prometheus sees the queued call.
        let (status, metrics) = s.call("GET", "/metrics", None).await;
        assert_eq!(status, 200);
        let metrics = metrics.as_str().expect("text");
        assert!(
            metrics.contains("callingbox_calls{status=\"queued\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("callingbox_turn_latency_seconds_count{stage=\"voice_to_voice\"} 0"),
            "{metrics}"
        );
        // Another organization sees none of it.
        let other = s.other_org_key().await;
        assert_error(
            &s.call_as(&other, "GET", &format!("/v1/calls/{id}"), None)
                .await,
            404,
            "not found",
        );
        assert_error(
            &s.call_as(&other, "GET", &format!("/v1/agents/{agent_id}"), None)
                .await,
            404,
            "not found",
        );
        let (_, theirs) = s.call_as(&other, "GET", "/v1/calls", None).await;
        assert_eq!(theirs["data"], json!([]));
    }
}

#[tokio::test]
async fn the_prompt_era_body_of_sdk_0_1_0_is_accepted() {
    for s in servers().await {
        assert_error(
            &s.call(
                "POST",
                "/v1/calls",
                Some(json!({"to": "+14155550199", "prompt": "Hi"})),
            )
            .await,
            400,
            "no phone number",
        );
        let numbers = s.buy_numbers("415", 2).await;
        let (status, call) = s
            .call("POST", "/v1/calls", Some(json!({
                "to": "+14155550199", "prompt": "Ask if they can come Friday.",
                "returns": {"can_come": "boolean"}, "language": "es",
                "voicemail_action": "leave_message",
                "tools": [{"type": "builtin", "name": "end_call", "description": "Hang up", "policy": "read",
                           "builtin": "end_call", "parameters": {"type": "object", "properties": {}, "required": [], "additionalProperties": false}}]
            })))
            .await;
        assert_eq!(status, 201, "{call}");
        assert!(call["agent_id"].is_null());
        assert_eq!(call["prompt"], "Ask if they can come Friday.");
        assert_eq!(
            call["from_number"],
            numbers[0].1.as_str(),
            "the oldest number"
        );
        assert_eq!(call["language"], "es");
        assert_eq!(call["metadata"]["language"], "es");
        let (status, defaulted) = s
            .call("POST", "/v1/calls", Some(json!({"to": "+14155550199"})))
            .await;
        assert_eq!(status, 201);
        assert_eq!(defaulted["prompt"], "Hello from CallingBox.");
        // PUT /v1/numbers/{id}/inbound: a full replace.
        let path = format!("/v1/numbers/{}/inbound", numbers[1].0);
        let full = json!({"enabled": true, "prompt": "Take a message.", "returns": {"name": "string"},
                          "webhook_url": null, "language": "en", "tools": null, "voicemail_action": null});
        let (status, number) = s.call("PUT", &path, Some(full)).await;
        assert_eq!(status, 200, "{number}");
        assert_eq!(number["inbound_enabled"], true);
        assert_eq!(number["inbound_prompt"], "Take a message.");
        assert_eq!(number["inbound_voicemail_action"], "hangup");
        let off = json!({"enabled": false, "prompt": null, "returns": null, "webhook_url": null,
                         "language": null, "tools": null, "voicemail_action": null});
        let (_, number) = s.call("PUT", &path, Some(off)).await;
        assert_eq!(number["inbound_enabled"], false);
        assert!(number["inbound_prompt"].is_null());
        assert_error(
            &s.call("PUT", &path, Some(json!({"enabled": true}))).await,
            400,
            "prompt is required",
        );
    }
}

#[tokio::test]
async fn calls_pause_when_credits_cannot_cover_the_hold() {
    for (backend, url) in database_urls().await {
        let pricing = callingbox::billing::Pricing {
            starting_credit_milli_cents: 400_000,
            ..Default::default()
        };
        let s = TestServer::start_with(backend, &url, pricing).await;
        s.buy_numbers("415", 1).await; // $1 -> $3 left: one $3 hold fits
        let body = json!({"to": "+14155550199", "prompt": "Hi"});
        let (status, first) = s.call("POST", "/v1/calls", Some(body.clone())).await;
        assert_eq!(status, 201, "{first}");
        let refused = s.call("POST", "/v1/calls", Some(body.clone())).await;
        assert_error(
            &refused,
            402,
            "Calls paused. Your balance is $0.00 but each call requires a $3.00 hold",
        );
        let (_, usage) = s.call("GET", "/v1/usage", None).await;
        assert_eq!(usage["held_milli_cents"], 300_000);
        assert_eq!(usage["available_milli_cents"], 0);
        assert_eq!(usage["numbers_milli_cents"], 100_000);
        assert_eq!(usage["credits_added_milli_cents"], 400_000);
        // Canceling the first releases its hold; the next call fits again.
        let id = first["id"].as_str().expect("id");
        let (status, canceled) = s
            .call("POST", &format!("/v1/calls/{id}/cancel"), None)
            .await;
        assert_eq!(status, 200, "{canceled}");
        assert_eq!(canceled["status"], "canceled");
        assert_eq!(canceled["reservation_status"], "released");
        assert_eq!(canceled["billing_amount_milli_cents"], 0);
        assert!(canceled["ended_at"].is_string());
        assert_error(
            &s.call("POST", &format!("/v1/calls/{id}/cancel"), None)
                .await,
            409,
            "already ended",
        );
        let (status, _) = s.call("POST", "/v1/calls", Some(body)).await;
        assert_eq!(status, 201);
    }
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_call() {
    for s in servers().await {
        s.buy_numbers("415", 1).await;
        let send = |body: Value| {
            let request = s
                .http
                .post(format!("{}/v1/calls", s.base))
                .bearer_auth(&s.key)
                .header("Idempotency-Key", "order-42")
                .json(&body);
            async move {
                let response = request.send().await.expect("answers");
                let status = response.status().as_u16();
                (status, response.json::<Value>().await.expect("json"))
            }
        };
        let body = json!({"to": "+14155550199", "prompt": "Hi"});
        let (first_status, first) = send(body.clone()).await;
        let (second_status, second) = send(body).await;
        assert_eq!((first_status, second_status), (201, 201));
        assert_eq!(first["id"], second["id"]);
        assert_eq!(
            s.launcher.launched.lock().expect("lock").len(),
            1,
            "dialed once"
        );
        let (status, other) = send(json!({"to": "+14155550100", "prompt": "Hi"})).await;
        assert_eq!(status, 409, "{other}");
        let (_, list) = s.call("GET", "/v1/calls", None).await;
        assert_eq!(list["data"].as_array().expect("data").len(), 1);
    }
}

#[tokio::test]
async fn calls_list_newest_first_with_cursors_and_filters() {
    for s in servers().await {
        s.buy_numbers("415", 1).await;
        let mut ids = Vec::new();
        for i in 0..5 {
            let (_, call) = s
                .call(
                    "POST",
                    "/v1/calls",
                    Some(json!({"to": format!("+1415555010{i}"), "prompt": "Hi"})),
                )
                .await;
            ids.push(call["id"].as_str().expect("id").to_owned());
        }
        let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
        let page = |q: &str| {
            let q = q.to_owned();
            let s = &s;
            async move {
                let (status, page) = s.call("GET", &format!("/v1/calls?{q}"), None).await;
                assert_eq!(status, 200, "{page}");
                let ids: Vec<String> = page["data"]
                    .as_array()
                    .expect("data")
                    .iter()
                    .map(|c| c["id"].as_str().expect("id").to_owned())
                    .collect();
                (ids, page["has_more"].as_bool().expect("has_more"))
            }
        };
        assert_eq!(page("limit=2").await, (newest_first[..2].to_vec(), true));
        assert_eq!(
            page(&format!("limit=2&starting_after={}", newest_first[1])).await,
            (newest_first[2..4].to_vec(), true)
        );
        assert_eq!(
            page(&format!("limit=2&starting_after={}", newest_first[3])).await,
            (newest_first[4..].to_vec(), false)
        );
        assert_eq!(
            page(&format!("limit=2&ending_before={}", newest_first[4])).await,
            (newest_first[2..4].to_vec(), true)
        );
        assert_eq!(
            page("status=queued&direction=outbound&limit=100")
                .await
                .0
                .len(),
            5
        );
        assert_eq!(page("direction=inbound").await.0.len(), 0);
        assert_error(
            &s.call("GET", "/v1/calls?status=happy", None).await,
            400,
            "not a call status",
        );
        assert_error(
            &s.call("GET", "/v1/calls?starting_after=x&ending_before=y", None)
                .await,
            400,
            "not both",
        );
        assert_error(
            &s.call(
                "GET",
                "/v1/calls?starting_after=00000000-0000-4000-8000-000000000000",
                None,
            )
            .await,
            400,
            "not an id in this list",
        );
    }
}

#[tokio::test]
async fn bad_requests_get_the_error_envelope_never_a_crash() {
    for s in servers().await {
        let raw =
            |method: reqwest::Method, path: &str, content_type: Option<&str>, body: Vec<u8>| {
                let mut request = s
                    .http
                    .request(method, format!("{}{path}", s.base))
                    .bearer_auth(&s.key)
                    .body(body);
                if let Some(ct) = content_type {
                    request = request.header("content-type", ct);
                }
                async move {
                    let response = request.send().await.expect("answers");
                    let status = response.status().as_u16();
                    let body: Value = response.json().await.expect("a JSON error body");
                    (status, body)
                }
            };
        use reqwest::Method;
        assert_error(
            &raw(
                Method::POST,
                "/v1/agents",
                Some("application/json"),
                b"{not json".to_vec(),
            )
            .await,
            400,
            "malformed JSON",
        );
        assert_error(
            &raw(
                Method::POST,
                "/v1/agents",
                Some("application/json"),
                b"".to_vec(),
            )
            .await,
            400,
            "empty",
        );
        assert_error(
            &raw(
                Method::POST,
                "/v1/agents",
                Some("text/plain"),
                b"{}".to_vec(),
            )
            .await,
            415,
            "Content-Type",
        );
        assert_error(
            &raw(Method::POST, "/v1/calls", None, b"{}".to_vec()).await,
            415,
            "Content-Type",
        );
        assert_error(
            &raw(
                Method::POST,
                "/v1/calls",
                Some("application/json"),
                b"[1,2]".to_vec(),
            )
            .await,
            400,
            "invalid",
        );
        let huge = format!(
            "{{\"name\": \"{}\", \"type\": \"outbound\"}}",
            "x".repeat(300 * 1024)
        );
        assert_error(
            &raw(
                Method::POST,
                "/v1/agents",
                Some("application/json"),
                huge.into_bytes(),
            )
            .await,
            413,
            "larger than",
        );
        assert_error(
            &s.call("GET", "/v1/nothing", None).await,
            404,
            "no such endpoint",
        );
        assert_error(
            &s.call("DELETE", "/v1/calls", None).await,
            405,
            "not allowed",
        );
        assert_error(
            &s.call("GET", "/v1/calls/not-a-uuid", None).await,
            404,
            "not found",
        );
        assert_error(
            &s.call(
                "GET",
                "/v1/agents/00000000-0000-4000-8000-000000000000",
                None,
            )
            .await,
            404,
            "not found",
        );
        let (status, health) = s.call("GET", "/healthz", None).await;
        assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    }
}

#[tokio::test]
async fn the_openapi_document_lists_every_route() {
    let doc = serde_json::to_value(callingbox::api::openapi()).expect("serializes");
    assert_eq!(doc["openapi"], "3.1.0");
    let expected = [
        ("/v1/agents", &["get", "post"][..]),
        ("/v1/agents/{id}", &["get", "patch", "delete"]),
        ("/v1/agents/{id}/numbers", &["post"]),
        ("/v1/agents/{id}/numbers/{number_id}", &["delete"]),
        ("/v1/agents/{id}/primary-number", &["put"]),
        ("/v1/numbers", &["get"]),
        ("/v1/numbers/available", &["get"]),
        ("/v1/numbers/purchase", &["post"]),
        ("/v1/numbers/{id}", &["get"]),
        ("/v1/numbers/{id}/inbound", &["put"]),
        ("/v1/calls", &["get", "post"]),
        ("/v1/calls/{id}", &["get"]),
        ("/v1/calls/{id}/transcript", &["get"]),
        ("/v1/calls/{id}/cancel", &["post"]),
        ("/v1/usage", &["get"]),
    ];
    let paths = doc["paths"].as_object().expect("paths");
    for (path, methods) in expected {
        for method in methods {
            assert!(
                paths.get(path).and_then(|p| p.get(method)).is_some(),
                "{method} {path} missing"
            );
        }
    }
    // Served by the server too.
    let (backend, url) = database_urls().await.remove(0);
    let s = TestServer::start(backend, &url).await;
    let served: Value = s
        .http
        .get(format!("{}/openapi.json", s.base))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("json");
    assert_eq!(served, doc);
}
