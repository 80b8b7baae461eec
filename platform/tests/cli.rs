//! The `callingbox` binary as a user runs it.

use std::process::Command;

fn callingbox() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_callingbox"));
    command.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    command
}

#[test]
fn version_and_help() {
    let version = callingbox().arg("--version").output().expect("runs");
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("callingbox {}", env!("CARGO_PKG_VERSION"))
    );
    let help = callingbox().arg("--help").output().expect("runs");
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("phone-path"), "{text}");
}

#[test]
fn phone_path_reports_every_fixture_with_g711_quality() {
    let output = callingbox()
        .args(["phone-path", "--json"])
        .output()
        .expect("runs");
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json report");
    let fixtures = report["fixtures"].as_array().expect("fixtures");
    assert!(fixtures.len() >= 20);
    for row in fixtures {
        if let Some(snr) = row["ulaw_snr_db"].as_f64() {
            // G.711's design point on speech is about 38 dB.
            if row["kind"] != "line_noise" {
                assert!((35.0..45.0).contains(&snr), "{row}");
            }
        }
        assert!(row["sox_ulaw_match"].as_f64().expect("corr") > 0.9, "{row}");
    }
}

#[test]
fn a_missing_fixtures_folder_is_a_clear_error() {
    let output = callingbox()
        .args(["phone-path", "--fixtures", "/nonexistent"])
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/manifest.json"), "{stderr}");
}

#[test]
fn unknown_commands_are_refused() {
    let output = callingbox().arg("frobnicate").output().expect("runs");
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn the_operator_creates_lists_and_revokes_keys_and_adds_credits() {
    let dir = std::env::temp_dir().join(format!("callingbox-cli-{}", std::process::id()));
    let url = format!("sqlite://{}/ops.db", dir.display());
    let run = |args: &[&str]| {
        let output = callingbox()
            .args(args)
            .env("DATABASE_URL", &url)
            .output()
            .expect("runs");
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        (output.status.success(), stdout, stderr)
    };
    let (ok, key, stderr) = run(&["keys", "create", "--org", "acme", "--name", "ci"]);
    assert!(ok, "{stderr}");
    let key = key.trim();
    assert!(key.starts_with("sk_live_") && key.len() == 48, "{key}");
    assert!(stderr.contains("created organization \"acme\""), "{stderr}");
    assert!(stderr.contains("$5.00"), "{stderr}");
    let (ok, list, _) = run(&["keys", "list"]);
    assert!(ok);
    assert!(
        list.contains("ci") && list.contains("active") && list.contains(&key[..12]),
        "{list}"
    );
    assert!(!list.contains(key), "the key itself is never shown again");
    let id = list
        .lines()
        .find(|l| l.contains(" ci "))
        .and_then(|l| l.split_whitespace().next())
        .expect("a row for the key")
        .to_owned();
    let (ok, balance, stderr) = run(&["credits", "add", "--org", "acme", "10.50"]);
    assert!(ok, "{stderr}");
    assert!(balance.contains("balance $15.50"), "{balance}");
    let (ok, _, stderr) = run(&["credits", "add", "--org", "acme", "ten"]);
    assert!(!ok && stderr.contains("amount must be dollars"), "{stderr}");
    let (ok, _, stderr) = run(&["keys", "revoke", &id]);
    assert!(ok, "{stderr}");
    let (_, list, _) = run(&["keys", "list"]);
    assert!(list.contains("revoked"), "{list}");
    let (ok, _, stderr) = run(&["keys", "revoke", &id]);
    assert!(!ok && stderr.contains("no live API key"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}
