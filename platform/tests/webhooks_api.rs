//! The webhook API as a client sees it (endpoints, event types, the default
//! secret, deliveries and redelivery) and the outbox `emit` fills, over real
//! HTTP, on SQLite and (when available) PostgreSQL.

mod common;

use callingbox::clock::{Clock, MonotonicClock};
use callingbox::lifecycle;
use callingbox::webhooks::deliveries;
use common::{TestServer, assert_error, database_urls};
use serde_json::{Value, json};

async fn servers() -> Vec<TestServer> {
    let mut servers = Vec::new();
    for (backend, url) in database_urls().await {
        servers.push(TestServer::start(backend, &url).await);
    }
    servers
}

fn is_secret(value: &Value) -> bool {
    value.as_str().is_some_and(|s| {
        s.len() == 38
            && s.starts_with("whsec_")
            && s[6..]
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    })
}

#[tokio::test]
async fn endpoints_are_created_with_a_secret_shown_once_listed_updated_rotated_and_deleted() {
    for s in servers().await {
        let (status, created) = s
            .call(
                "POST",
                "/v1/webhook_endpoints",
                Some(json!({"url": "https://hooks.example.com/a", "description": "prod"})),
            )
            .await;
        assert_eq!(status, 201, "{}: {created}", s.backend);
        assert!(is_secret(&created["signing_secret"]), "{created}");
        assert_eq!(created["enabled_events"], json!(["*"]));
        assert_eq!(created["status"], "enabled");
        assert_eq!(created["consecutive_failures"], 0);
        assert_eq!(created["org_id"], s.org_id.as_str());
        assert!(created["disabled_reason"].is_null());
        let id = created["id"].as_str().expect("id").to_owned();

        let (status, got) = s
            .call("GET", &format!("/v1/webhook_endpoints/{id}"), None)
            .await;
        assert_eq!(status, 200);
        assert!(got.get("signing_secret").is_none(), "shown only once");
        assert_eq!(got["description"], "prod");

        let (_, second) = s
            .call(
                "POST",
                "/v1/webhook_endpoints",
                Some(json!({"url": "http://hooks.example.com/b",
                            "enabled_events": ["call.completed", "call.failed", "call.completed"]})),
            )
            .await;
        assert_eq!(
            second["enabled_events"],
            json!(["call.completed", "call.failed"])
        );
        let (status, list) = s.call("GET", "/v1/webhook_endpoints", None).await;
        assert_eq!(status, 200);
        assert_eq!(list["has_more"], false);
        let ids: Vec<_> = list["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|e| e["id"].as_str().expect("id").to_owned())
            .collect();
        assert_eq!(
            ids,
            vec![second["id"].as_str().expect("id").to_owned(), id.clone()]
        );
        assert!(list["data"][0].get("signing_secret").is_none());
        let (_, page) = s.call("GET", "/v1/webhook_endpoints?limit=1", None).await;
        assert_eq!(page["has_more"], true);
        let (_, older) = s
            .call(
                "GET",
                &format!("/v1/webhook_endpoints?limit=1&starting_after={}", ids[0]),
                None,
            )
            .await;
        assert_eq!(older["data"][0]["id"], id.as_str());
        assert_eq!(older["has_more"], false);

        let (status, patched) = s
            .call(
                "PATCH",
                &format!("/v1/webhook_endpoints/{id}"),
                Some(
                    json!({"description": null, "enabled_events": ["call.answered"],
                            "url": "https://hooks.example.com/new"}),
                ),
            )
            .await;
        assert_eq!(status, 200, "{patched}");
        assert!(patched["description"].is_null());
        assert_eq!(patched["enabled_events"], json!(["call.answered"]));
        assert_eq!(patched["url"], "https://hooks.example.com/new");

        let (_, disabled) = s
            .call(
                "PATCH",
                &format!("/v1/webhook_endpoints/{id}"),
                Some(json!({"status": "disabled"})),
            )
            .await;
        assert_eq!(disabled["status"], "disabled");
        assert_eq!(disabled["disabled_reason"], "manual");
        assert!(disabled["disabled_at"].is_string());
        let (_, enabled) = s
            .call(
                "PATCH",
                &format!("/v1/webhook_endpoints/{id}"),
                Some(json!({"status": "enabled"})),
            )
            .await;
        assert_eq!(enabled["status"], "enabled");
        assert!(enabled["disabled_reason"].is_null());
        assert!(enabled["disabled_at"].is_null());

        let (status, rotated) = s
            .call(
                "POST",
                &format!("/v1/webhook_endpoints/{id}/rotate_secret"),
                None,
            )
            .await;
        assert_eq!(status, 200);
        assert!(is_secret(&rotated["signing_secret"]));
        assert_ne!(rotated["signing_secret"], created["signing_secret"]);

        let (status, deleted) = s
            .call("DELETE", &format!("/v1/webhook_endpoints/{id}"), None)
            .await;
        assert_eq!(status, 200);
        assert_eq!(deleted, json!({"id": id, "deleted": true}));
        assert_error(
            &s.call("GET", &format!("/v1/webhook_endpoints/{id}"), None)
                .await,
            404,
            "not found",
        );
    }
}

#[tokio::test]
async fn endpoint_input_is_validated() {
    for s in servers().await {
        let post = |body: Value| s.call("POST", "/v1/webhook_endpoints", Some(body));
        assert_error(
            &post(json!({"url": "ftp://x.example.com"})).await,
            400,
            "http or https",
        );
        assert_error(&post(json!({"url": "not a url"})).await, 400, "not a URL");
        assert_error(&post(json!({})).await, 400, "url");
        assert_error(
            &post(json!({"url": "https://a.example.com", "enabled_events": ["call.exploded"]}))
                .await,
            400,
            "unknown event type \"call.exploded\"",
        );
        assert_error(
            &post(json!({"url": "https://a.example.com", "enabled_events": []})).await,
            400,
            "must not be empty",
        );
        assert_error(
            &post(json!({"url": "https://a.example.com", "secret": "x"})).await,
            400,
            "unknown field",
        );
        let long = format!("https://a.example.com/{}", "x".repeat(2100));
        assert_error(&post(json!({"url": long})).await, 400, "longer than");
        let (_, ok) = post(json!({"url": "https://a.example.com",
                                  "enabled_events": ["*", "call.queued"]}))
        .await;
        assert_eq!(ok["enabled_events"], json!(["*"]));
        let id = ok["id"].as_str().expect("id");
        let path = format!("/v1/webhook_endpoints/{id}");
        assert_error(
            &s.call("PATCH", &path, Some(json!({"status": "paused"})))
                .await,
            400,
            "status",
        );
        assert_error(
            &s.call("PATCH", &path, Some(json!({"url": 5}))).await,
            400,
            "url must be a string",
        );
        assert_error(
            &s.call("PATCH", &path, Some(json!({"signing_secret": "x"})))
                .await,
            400,
            "unknown field",
        );
        assert_error(
            &s.call("GET", "/v1/webhook_endpoints?limit=101", None).await,
            400,
            "limit",
        );
        assert_error(
            &s.call("GET", "/v1/webhook_endpoints/nope", None).await,
            404,
            "not found",
        );
        assert_error(
            &s.call_as("sk_live_nope", "GET", "/v1/webhook_endpoints", None)
                .await,
            401,
            "invalid",
        );
    }
}

#[tokio::test]
async fn another_organization_sees_404_everywhere() {
    for s in servers().await {
        let (_, endpoint) = s
            .call(
                "POST",
                "/v1/webhook_endpoints",
                Some(json!({"url": "https://a.example.com/h"})),
            )
            .await;
        let id = endpoint["id"].as_str().expect("id");
        let other = s.other_org_key().await;
        for (method, path, body) in [
            ("GET", format!("/v1/webhook_endpoints/{id}"), None),
            (
                "PATCH",
                format!("/v1/webhook_endpoints/{id}"),
                Some(json!({"description": "x"})),
            ),
            ("DELETE", format!("/v1/webhook_endpoints/{id}"), None),
            (
                "POST",
                format!("/v1/webhook_endpoints/{id}/rotate_secret"),
                None,
            ),
        ] {
            assert_error(
                &s.call_as(&other, method, &path, body).await,
                404,
                "not found",
            );
        }
        let (_, theirs) = s
            .call_as(&other, "GET", "/v1/webhook_endpoints", None)
            .await;
        assert_eq!(theirs["data"], json!([]));
        // The default secrets differ per organization.
        let (_, mine) = s.call("GET", "/v1/webhook_signing_secret", None).await;
        let (_, their_secret) = s
            .call_as(&other, "GET", "/v1/webhook_signing_secret", None)
            .await;
        assert!(is_secret(&mine["signing_secret"]));
        assert_ne!(mine["signing_secret"], their_secret["signing_secret"]);
    }
}

#[tokio::test]
async fn the_event_types_and_the_default_secret_are_published() {
    for s in servers().await {
        let (status, types) = s.call("GET", "/v1/webhook_event_types", None).await;
        assert_eq!(status, 200);
        let names: Vec<_> = types["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|t| t["type"].as_str().expect("type"))
            .collect();
        assert_eq!(
            names,
            [
                "call.queued",
                "call.ringing",
                "call.answered",
                "call.completed",
                "call.failed",
                "call.no_answer",
                "call.busy",
                "call.canceled"
            ]
        );
        assert!(
            types["data"][3]["description"]
                .as_str()
                .expect("text")
                .contains("extraction")
        );
        let (_, before) = s.call("GET", "/v1/webhook_signing_secret", None).await;
        let (status, rotated) = s
            .call("POST", "/v1/webhook_signing_secret/rotate", None)
            .await;
        assert_eq!(status, 200);
        assert!(is_secret(&rotated["signing_secret"]));
        assert_ne!(before, rotated);
        let (_, after) = s.call("GET", "/v1/webhook_signing_secret", None).await;
        assert_eq!(after, rotated);
        let (_, openapi) = s.call("GET", "/openapi.json", None).await;
        for path in [
            "/v1/webhook_endpoints",
            "/v1/webhook_endpoints/{id}",
            "/v1/webhook_endpoints/{id}/rotate_secret",
            "/v1/webhook_event_types",
            "/v1/webhook_signing_secret",
            "/v1/webhook_signing_secret/rotate",
            "/v1/webhook_deliveries",
            "/v1/webhook_deliveries/{id}",
            "/v1/webhook_deliveries/{id}/redeliver",
            "/v1/webhook_deliveries/{id}/attempts",
        ] {
            assert!(openapi["paths"].get(path).is_some(), "{path} documented");
        }
    }
}

async fn dispatch(s: &TestServer, webhook_url: Option<&str>) -> Value {
    let mut body = json!({"to": "+14155550123", "prompt": "Say hi."});
    if let Some(url) = webhook_url {
        body["webhook_url"] = json!(url);
    }
    let (status, call) = s.call("POST", "/v1/calls", Some(body)).await;
    assert_eq!(status, 201, "{call}");
    call
}

async fn deliveries_of(s: &TestServer, query: &str) -> Vec<Value> {
    let (status, list) = s
        .call("GET", &format!("/v1/webhook_deliveries?{query}"), None)
        .await;
    assert_eq!(status, 200, "{list}");
    list["data"].as_array().expect("data").clone()
}

#[tokio::test]
async fn each_event_fans_out_to_every_matching_endpoint_and_the_inline_url_in_the_same_transaction()
{
    for s in servers().await {
        s.buy_numbers("415", 1).await;
        let make = |url: &str, events: Value| {
            s.call(
                "POST",
                "/v1/webhook_endpoints",
                Some(json!({"url": url, "enabled_events": events})),
            )
        };
        let (_, all) = make("https://all.example.com/h", json!(["*"])).await;
        let (_, ringing_only) = make("https://ring.example.com/h", json!(["call.ringing"])).await;
        let (_, off) = make("https://off.example.com/h", json!(["*"])).await;
        let off_id = off["id"].as_str().expect("id");
        s.call(
            "PATCH",
            &format!("/v1/webhook_endpoints/{off_id}"),
            Some(json!({"status": "disabled"})),
        )
        .await;

        let call = dispatch(&s, Some("https://inline.example.com/hook")).await;
        let call_id = call["id"].as_str().expect("id");
        assert_eq!(call["webhook_status"], "pending");
        let queued = deliveries_of(&s, &format!("call_id={call_id}")).await;
        let mut urls: Vec<_> = queued
            .iter()
            .map(|d| d["url"].as_str().expect("url"))
            .collect();
        urls.sort();
        assert_eq!(
            urls,
            [
                "https://all.example.com/h",
                "https://inline.example.com/hook"
            ],
            "call.queued: the * endpoint and the inline URL; not the ringing-only or disabled one"
        );
        let inline = queued
            .iter()
            .find(|d| d["endpoint_id"].is_null())
            .expect("an inline delivery");
        assert_eq!(inline["event_type"], "call.queued");
        assert_eq!(inline["status"], "pending");
        assert_eq!(inline["attempt_count"], 0);
        assert_eq!(inline["manual_retry_count"], 0);
        assert_eq!(inline["call_id"], call_id);
        assert_eq!(inline["org_id"], s.org_id.as_str());

        // The stored envelope: id = delivery id, the call as of the event.
        let id = inline["id"].as_str().expect("id");
        let payload = deliveries::payload(&s.store, id)
            .await
            .expect("reads")
            .expect("stored");
        let envelope: Value = serde_json::from_str(&payload).expect("json");
        assert_eq!(envelope["id"], id);
        assert_eq!(envelope["type"], "call.queued");
        assert_eq!(envelope["api_version"], "2026-04");
        assert!(envelope["created"].as_i64().expect("unix seconds") > 1_700_000_000);
        assert_eq!(envelope["data"]["call"]["id"], call_id);
        assert_eq!(envelope["data"]["call"]["status"], "queued");

        let now = MonotonicClock::default().now();
        assert!(
            lifecycle::advance(&s.store, call_id, "ringing", None, now)
                .await
                .expect("advances")
        );
        let all_of_call = deliveries_of(&s, &format!("call_id={call_id}")).await;
        assert_eq!(all_of_call.len(), 5);
        let ringing: Vec<_> = all_of_call
            .iter()
            .filter(|d| d["event_type"] == "call.ringing")
            .collect();
        assert_eq!(ringing.len(), 3, "*, ringing-only and inline");
        // Newest first: the ringing deliveries come before the queued ones.
        assert_eq!(all_of_call[0]["event_type"], "call.ringing");
        let ringing_payload = deliveries::payload(&s.store, ringing[0]["id"].as_str().expect("id"))
            .await
            .expect("reads")
            .expect("stored");
        let envelope: Value = serde_json::from_str(&ringing_payload).expect("json");
        assert_eq!(envelope["data"]["call"]["status"], "ringing");
        assert!(envelope["data"]["call"]["started_at"].is_string());

        let ring_id = ringing_only["id"].as_str().expect("id");
        let of_endpoint = deliveries_of(&s, &format!("endpoint_id={ring_id}")).await;
        assert_eq!(of_endpoint.len(), 1);
        assert_eq!(of_endpoint[0]["event_type"], "call.ringing");
        let all_id = all["id"].as_str().expect("id");
        assert_eq!(
            deliveries_of(&s, &format!("endpoint_id={all_id}"))
                .await
                .len(),
            2
        );
        assert_eq!(deliveries_of(&s, "status=pending").await.len(), 5);
        assert_eq!(deliveries_of(&s, "status=delivered").await.len(), 0);

        // A call without a webhook_url and no endpoint interested: nothing.
        let (_, _) = s
            .call(
                "PATCH",
                &format!("/v1/webhook_endpoints/{all_id}"),
                Some(json!({"enabled_events": ["call.completed"]})),
            )
            .await;
        let quiet = dispatch(&s, None).await;
        let quiet_id = quiet["id"].as_str().expect("id");
        assert!(
            deliveries_of(&s, &format!("call_id={quiet_id}"))
                .await
                .is_empty()
        );
        assert_eq!(quiet["webhook_status"], "none");
    }
}

#[tokio::test]
async fn deliveries_page_by_cursor_and_are_redelivered_with_the_same_id() {
    for s in servers().await {
        s.buy_numbers("415", 1).await;
        s.call(
            "POST",
            "/v1/webhook_endpoints",
            Some(json!({"url": "https://all.example.com/h"})),
        )
        .await;
        for _ in 0..3 {
            dispatch(&s, None).await;
        }
        let all = deliveries_of(&s, "").await;
        assert_eq!(all.len(), 3);
        let (_, first) = s.call("GET", "/v1/webhook_deliveries?limit=2", None).await;
        assert_eq!(first["has_more"], true);
        assert_eq!(first["data"].as_array().expect("data").len(), 2);
        let last = first["data"][1]["id"].as_str().expect("id");
        let (_, rest) = s
            .call(
                "GET",
                &format!("/v1/webhook_deliveries?limit=2&starting_after={last}"),
                None,
            )
            .await;
        assert_eq!(rest["has_more"], false);
        assert_eq!(rest["data"][0]["id"], all[2]["id"]);
        let (_, back) = s
            .call(
                "GET",
                &format!(
                    "/v1/webhook_deliveries?ending_before={}",
                    all[2]["id"].as_str().expect("id")
                ),
                None,
            )
            .await;
        assert_eq!(back["data"].as_array().expect("data").len(), 2);
        assert_eq!(back["data"][0]["id"], all[0]["id"], "newest first");

        for bad in [
            "limit=201",
            "limit=0",
            "status=sent",
            "endpoint_id=nope",
            "call_id=x",
            "starting_after=00000000-0000-4000-8000-000000000000",
        ] {
            let (status, body) = s
                .call("GET", &format!("/v1/webhook_deliveries?{bad}"), None)
                .await;
            assert_eq!(status, 400, "{bad}: {body}");
        }
        assert_eq!(deliveries_of(&s, "limit=200").await.len(), 3);

        let id = all[1]["id"].as_str().expect("id");
        let (status, got) = s
            .call("GET", &format!("/v1/webhook_deliveries/{id}"), None)
            .await;
        assert_eq!(status, 200);
        assert_eq!(got["id"], id);
        let (status, again) = s
            .call(
                "POST",
                &format!("/v1/webhook_deliveries/{id}/redeliver"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{again}");
        assert_eq!(again["id"], id, "the same event id");
        assert_eq!(again["status"], "pending");
        assert_eq!(again["manual_retry_count"], 1);
        let (_, twice) = s
            .call(
                "POST",
                &format!("/v1/webhook_deliveries/{id}/redeliver"),
                None,
            )
            .await;
        assert_eq!(twice["manual_retry_count"], 2);
        let (status, attempts) = s
            .call(
                "GET",
                &format!("/v1/webhook_deliveries/{id}/attempts"),
                None,
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(attempts["data"], json!([]));

        let other = s.other_org_key().await;
        for (method, path) in [
            ("GET", format!("/v1/webhook_deliveries/{id}")),
            ("POST", format!("/v1/webhook_deliveries/{id}/redeliver")),
            ("GET", format!("/v1/webhook_deliveries/{id}/attempts")),
        ] {
            assert_error(
                &s.call_as(&other, method, &path, None).await,
                404,
                "not found",
            );
        }
        let (_, theirs) = s
            .call_as(&other, "GET", "/v1/webhook_deliveries", None)
            .await;
        assert_eq!(theirs["data"], json!([]));
        assert_error(
            &s.call("POST", "/v1/webhook_deliveries/nope/redeliver", None)
                .await,
            404,
            "not found",
        );

        // Deleting the endpoint exhausts its pending deliveries, which
        // cannot be redelivered.
        let endpoint_id = all[0]["endpoint_id"].as_str().expect("endpoint").to_owned();
        s.call(
            "DELETE",
            &format!("/v1/webhook_endpoints/{endpoint_id}"),
            None,
        )
        .await;
        let after = deliveries_of(&s, "status=exhausted").await;
        assert_eq!(after.len(), 3);
        assert_eq!(after[0]["last_error"], "endpoint deleted");
        assert_error(
            &s.call(
                "POST",
                &format!("/v1/webhook_deliveries/{id}/redeliver"),
                None,
            )
            .await,
            409,
            "deleted",
        );
    }
}
