//! `callingbox demo`, the README's first command, end to end: a real call
//! between two engines on loopback SIP, with the local speech providers
//! (Whisper hears the callee's recorded fixtures, the local LLM answers and
//! calls the agent's HTTP tool, Piper speaks), the transcript printed live
//! and the final call JSON.

use std::process::Command;

#[test]
fn the_demo_places_a_real_call_and_prints_the_transcript_and_result() {
    let output = Command::new(env!("CARGO_BIN_EXE_callingbox"))
        .args(["demo", "--timeout-seconds", "300"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    // The live transcript: the callee's recorded lines, as Whisper heard them.
    let caller_lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("caller: "))
        .collect();
    let heard = caller_lines.join(" ").to_lowercase();
    // Every line of the callee is heard, in turns: its greeting whole (the
    // words after its comma pause too), then one reply per agent turn.
    for words in ["hello", "sam speaking", "reschedule", "monday", "yes"] {
        assert!(heard.contains(words), "{words:?} was not heard: {stdout}");
    }
    assert!(
        caller_lines.len() >= 3,
        "the callee's three lines are three turns: {stdout}"
    );
    let agent_turns = stdout.lines().filter(|l| l.starts_with("agent : ")).count();
    assert!(agent_turns >= 2, "the agent answered each turn: {stdout}");
    // The local model called the agent's HTTP tool, with a day for its
    // argument (its server prints each request it served).
    let tool_calls: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("tool  : check_delivery_slots {\"day\":"))
        .collect();
    assert!(!tool_calls.is_empty(), "no tool was called: {stdout}");
    // The final JSON.
    let json_start = stdout.find("\n{").map(|i| i + 1).unwrap_or(0);
    let call: serde_json::Value =
        serde_json::from_str(&stdout[json_start..]).expect("the final call JSON");
    assert_eq!(call["status"], "completed", "{call}");
    assert_eq!(call["direction"], "outbound");
    assert!(
        call["billed_duration_seconds"]
            .as_i64()
            .is_some_and(|s| s > 0),
        "{call}"
    );
    assert_eq!(call["reservation_status"], "settled");
    assert_eq!(call["result_status"], "completed", "{call}");
    let result = call["result"].as_object().expect("a result object");
    for key in ["confirmed", "new_delivery_day", "new_delivery_slot"] {
        assert!(result.contains_key(key), "{key} in {call}");
    }
    assert!(result["confirmed"].is_boolean() || result["confirmed"].is_null());
}
