//! Calls over the web transports of the node `callingbox serve` runs: a
//! carrier's media stream (the Twilio Media Streams protocol) on
//! `/media-stream` and a browser's WebRTC offer on `/webrtc/offer`, both on
//! the API's port. A stream names its agent and API key in its TwiML
//! parameters; the call is then recorded, transcribed, extracted and
//! billed like any inbound call. Bad keys, unknown agents and empty offers
//! are refused with a clear reason. Scripted speech providers; SQLite and
//! (with `CALLINGBOX_TEST_POSTGRES_URL`) PostgreSQL.

mod common;
mod node_support;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use callingbox_engine::codecs::{G711Law, read_wav};
use callingbox_engine::providers::scripted::{LlmLatency, ScriptMatch, ScriptRule, ScriptedLlm};
use common::database_urls;
use futures::{SinkExt, StreamExt};
use node_support::{AGENT_ANSWERS, CALLER_SAYS, TestNode, start};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const STREAM_SID: &str = "MZ00000000000000000000000000000001";
const CALL_SID: &str = "CA00000000000000000000000000000001";

fn fixture_ulaw(id: &str) -> Vec<u8> {
    let path = format!(
        "{}/../fixtures/audio/{id}.8k.ulaw.wav",
        env!("CARGO_MANIFEST_DIR")
    );
    let audio = read_wav(path).expect("fixture");
    let mut codes = vec![0u8; audio.samples.len()];
    G711Law::MuLaw
        .encode(&audio.samples, &mut codes)
        .expect("encode");
    codes
}

fn start_message(parameters: Value) -> Value {
    json!({
        "event": "start", "sequenceNumber": "1", "streamSid": STREAM_SID,
        "start": {
            "accountSid": "AC00000000000000000000000000000001",
            "streamSid": STREAM_SID, "callSid": CALL_SID, "tracks": ["inbound"],
            "customParameters": parameters,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    })
}

async fn create_agent(t: &TestNode) -> String {
    let (status, agent) = t
        .call(
            "POST",
            "/v1/agents",
            Some(json!({
                "name": "web desk", "type": "inbound",
                "instructions": "Take table bookings.",
                "returns": {"party_size": "integer"},
            })),
        )
        .await;
    assert_eq!(status, 201, "{agent}");
    agent["id"].as_str().expect("id").to_owned()
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(t: &TestNode) -> Socket {
    let url = format!("ws://{}/media-stream", t.node.api);
    let (socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("the node accepts the media stream");
    socket
}

async fn send(socket: &mut Socket, message: Value) {
    socket
        .send(Message::text(message.to_string()))
        .await
        .expect("send");
}

/// What the node sent until it closed the socket (or `limit` passed).
async fn until_closed(socket: &mut Socket, limit: Duration) -> (Vec<Value>, Option<(u16, String)>) {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline, socket.next()).await {
        match message {
            Ok(Message::Text(text)) => {
                seen.push(serde_json::from_str(text.as_str()).expect("JSON from the node"));
            }
            Ok(Message::Close(frame)) => {
                return (
                    seen,
                    frame.map(|f| (u16::from(f.code), f.reason.to_string())),
                );
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    (seen, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_media_stream_call_reaches_the_agent_and_is_recorded_transcribed_and_billed() {
    for (backend, url) in database_urls().await {
        let t = start(&url, (44_000, 44_099)).await;
        let agent_id = create_agent(&t).await;
        let mut socket = connect(&t).await;
        send(
            &mut socket,
            json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}),
        )
        .await;
        send(
            &mut socket,
            start_message(json!({
                "agent_id": agent_id, "api_key": t.key,
                "from": "+12125550147", "to": "+14155550100",
            })),
        )
        .await;

        // The caller's request at real-time pace, then a silence the agent
        // answers into; the agent's media comes back on the same socket.
        let (mut sink, mut stream) = socket.split();
        let caller = tokio::spawn(async move {
            let mut audio = fixture_ulaw("statement_book_table");
            audio.extend(std::iter::repeat_n(0xFF, 8_000 * 6));
            let mut ticker = tokio::time::interval(Duration::from_millis(20));
            for (index, chunk) in audio.chunks(160).enumerate() {
                ticker.tick().await;
                let media = json!({
                    "event": "media", "sequenceNumber": (index + 2).to_string(),
                    "streamSid": STREAM_SID,
                    "media": {"track": "inbound", "chunk": (index + 1).to_string(),
                              "timestamp": (index * 20).to_string(),
                              "payload": BASE64.encode(chunk)},
                });
                if sink.send(Message::text(media.to_string())).await.is_err() {
                    return sink;
                }
            }
            let stop = json!({"event": "stop", "sequenceNumber": "9999", "streamSid": STREAM_SID,
                              "stop": {"accountSid": "AC00000000000000000000000000000001",
                                       "callSid": CALL_SID}});
            let _ = sink.send(Message::text(stop.to_string())).await;
            sink
        });
        let mut agent_media = 0usize;
        let mut marks = 0usize;
        while let Ok(Some(Ok(message))) =
            tokio::time::timeout(Duration::from_secs(20), stream.next()).await
        {
            match message {
                Message::Text(text) => {
                    let message: Value = serde_json::from_str(text.as_str()).expect("JSON");
                    assert_eq!(message["streamSid"], STREAM_SID, "{message}");
                    match message["event"].as_str() {
                        Some("media") => agent_media += 1,
                        Some("mark") => marks += 1,
                        _ => {}
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = caller.await;
        assert!(agent_media > 50, "{backend}: {agent_media} agent frames");
        assert!(marks >= 1, "{backend}: no mark after the reply");

        let mut call = Value::Null;
        for _ in 0..200 {
            let (status, list) = t.call("GET", "/v1/calls?direction=inbound", None).await;
            assert_eq!(status, 200, "{list}");
            if let Some(found) = list["data"].as_array().and_then(|calls| calls.first())
                && found["result_status"] != "pending"
            {
                call = found.clone();
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(call.is_object(), "{backend}: no finished media-stream call");
        assert_eq!(call["agent_id"], agent_id.as_str(), "{call}");
        assert_eq!(call["direction"], "inbound", "{call}");
        assert_eq!(call["from_number"], "+12125550147", "{call}");
        assert_eq!(call["to_number"], "+14155550100", "{call}");
        assert_eq!(call["metadata"]["transport"], "media_stream", "{call}");
        assert_eq!(call["metadata"]["call_sid"], CALL_SID, "{call}");
        assert_eq!(call["status"], "completed", "{call}");
        assert_eq!(call["hangup_cause"], "remote_hangup", "{call}");
        assert_eq!(call["result"], json!({"party_size": 4}), "{call}");
        assert_eq!(call["reservation_status"], "settled", "{call}");
        let billed = call["billed_duration_seconds"].as_i64().expect("billed");
        assert!((8..=14).contains(&billed), "{backend}: billed {billed} s");

        let id = call["id"].as_str().expect("id");
        let (_, transcript) = t
            .call("GET", &format!("/v1/calls/{id}/transcript"), None)
            .await;
        let said: Vec<(&str, &str)> = transcript["segments"]
            .as_array()
            .expect("segments")
            .iter()
            .map(|s| {
                (
                    s["role"].as_str().unwrap_or_default(),
                    s["text"].as_str().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            said,
            [("user", CALLER_SAYS), ("agent", AGENT_ANSWERS)],
            "{backend}: {transcript}"
        );
        t.node.shutdown(Duration::from_secs(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_media_stream_with_a_bad_key_or_an_unknown_agent_is_refused_and_records_nothing() {
    for (backend, url) in database_urls().await {
        let t = start(&url, (44_100, 44_199)).await;
        let agent_id = create_agent(&t).await;
        for (parameters, needle) in [
            (json!({"agent_id": agent_id}), "a valid API key is required"),
            (
                json!({"agent_id": agent_id, "api_key": "sk_live_not_a_key"}),
                "a valid API key is required",
            ),
            (json!({"api_key": t.key}), "the agent to answer is required"),
            (
                json!({"agent_id": "3f1c0000-0000-0000-0000-000000000000", "api_key": t.key}),
                "no agent",
            ),
        ] {
            let mut socket = connect(&t).await;
            send(&mut socket, start_message(parameters.clone())).await;
            let (_, closed) = until_closed(&mut socket, Duration::from_secs(5)).await;
            let (code, reason) = closed.unwrap_or_else(|| panic!("{backend}: not closed"));
            assert_eq!(code, u16::from(CloseCode::Error), "{backend}: {reason}");
            assert!(reason.contains(needle), "{backend}: {parameters}: {reason}");
        }
        let (_, list) = t.call("GET", "/v1/calls", None).await;
        assert_eq!(list["data"], json!([]), "{backend}: {list}");
        t.node.shutdown(Duration::from_secs(5)).await;
    }
}

/// A browser's offer (what Chromium sends: one Opus audio section).
const BROWSER_OFFER: &str = "v=0\r\n\
o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=group:BUNDLE 0\r\n\
a=msid-semantic: WMS\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:Vq2Y\r\n\
a=ice-pwd:kUe8xV2JbR2lPz3Bj5Wm0aNf\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:sha-256 3A:96:6D:57:B2:C2:C7:61:A0:46:3E:1C:97:39:D3:F7:0A:88:A0:B1:EC:03:FB:10:A5:5D:3A:37:AB:DD:02:AA\r\n\
a=setup:actpass\r\n\
a=mid:0\r\n\
a=sendrecv\r\n\
a=msid:- 7c1f2a3b-0000-4000-8000-000000000001\r\n\
a=rtcp-mux\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\n\
a=ssrc:1001 cname:callingboxtest\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webrtc_offer_is_answered_for_a_keyed_agent_and_refused_otherwise() {
    for (backend, url) in database_urls().await {
        let t = start(&url, (44_200, 44_299)).await;
        let agent_id = create_agent(&t).await;
        let api = t.node.api;
        let offer = |parameters: Value| async move {
            let response = reqwest::Client::new()
                .post(format!("http://{api}/webrtc/offer"))
                .json(&json!({"type": "offer", "sdp": BROWSER_OFFER, "parameters": parameters}))
                .send()
                .await
                .expect("the node answers");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("JSON"))
        };
        let (status, body) = offer(json!({"agent_id": agent_id})).await;
        assert_eq!(status, 401, "{backend}: {body}");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("API key")),
            "{body}"
        );
        let (status, body) = offer(json!({"agent_id": "nope", "api_key": t.key})).await;
        assert_eq!(status, 404, "{backend}: {body}");

        let (status, answer) = offer(json!({"agent_id": agent_id, "api_key": t.key})).await;
        assert_eq!(status, 200, "{backend}: {answer}");
        assert_eq!(answer["type"], "answer");
        let sdp = answer["sdp"].as_str().expect("sdp");
        assert!(
            sdp.contains("opus/48000/2") && sdp.contains("a=candidate"),
            "{sdp}"
        );
        // The call is recorded at once, ringing until the browser connects.
        let (_, list) = t.call("GET", "/v1/calls", None).await;
        let calls = list["data"].as_array().expect("data");
        assert_eq!(calls.len(), 1, "{backend}: {list}");
        assert_eq!(calls[0]["metadata"]["transport"], "webrtc", "{list}");
        assert_eq!(calls[0]["agent_id"], agent_id.as_str(), "{list}");
        // This browser never connects: the call fails once the connect
        // timeout passes, as no_response, and nothing is charged.
        let id = calls[0]["id"].as_str().expect("id").to_owned();
        let mut call = Value::Null;
        for _ in 0..300 {
            let (_, found) = t.call("GET", &format!("/v1/calls/{id}"), None).await;
            if found["status"] == "failed" {
                call = found;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(call["hangup_cause"], "no_response", "{backend}: {call}");
        assert_eq!(call["billing_amount_milli_cents"], 0, "{call}");
        t.node.shutdown(Duration::from_secs(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_ending_a_media_stream_call_closes_the_stream() {
    for (backend, url) in database_urls().await {
        let (mut stack, extractor) = node_support::scripted_stack();
        stack.llm = std::sync::Arc::new(ScriptedLlm::new(
            vec![
                ScriptRule::when(ScriptMatch::Always)
                    .reply("Thanks, goodbye.")
                    .call("end_call", json!({})),
            ],
            LlmLatency {
                time_to_first_token: Duration::from_millis(200),
                tokens_per_second: 50,
            },
        ));
        let t = node_support::start_with(&url, (44_300, 44_399), stack, extractor).await;
        let (status, agent) = t
            .call(
                "POST",
                "/v1/agents",
                Some(json!({
                    "name": "closer", "type": "inbound", "instructions": "Say goodbye.",
                    "tools": [{"type": "builtin", "name": "end_call", "description": "Hang up"}],
                })),
            )
            .await;
        assert_eq!(status, 201, "{agent}");
        let mut socket = connect(&t).await;
        send(
            &mut socket,
            start_message(json!({"agent_id": agent["id"], "api_key": t.key})),
        )
        .await;
        let mut audio = fixture_ulaw("statement_book_table");
        audio.extend(std::iter::repeat_n(0xFF, 8_000 * 10));
        for (index, chunk) in audio.chunks(160).enumerate() {
            let media = json!({
                "event": "media", "streamSid": STREAM_SID,
                "media": {"track": "inbound", "chunk": (index + 1).to_string(),
                          "timestamp": (index * 20).to_string(), "payload": BASE64.encode(chunk)},
            });
            if socket.send(Message::text(media.to_string())).await.is_err() {
                break; // The node hung up while the caller still talked.
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // No `stop` from the carrier: the node must end the call itself.
        let (_, closed) = until_closed(&mut socket, Duration::from_secs(15)).await;
        let (code, reason) = closed.unwrap_or_else(|| panic!("{backend}: the stream stayed open"));
        assert_eq!(code, u16::from(CloseCode::Normal), "{backend}: {reason}");
        let mut call = Value::Null;
        for _ in 0..100 {
            let (_, list) = t.call("GET", "/v1/calls", None).await;
            if let Some(found) = list["data"].as_array().and_then(|c| c.first())
                && found["status"] == "completed"
            {
                call = found.clone();
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(call["hangup_cause"], "local_hangup", "{backend}: {call}");
        t.node.shutdown(Duration::from_secs(5)).await;
    }
}
