//! What the tests that drive SIPp share: fixture paths, free ports, and
//! SIPp's output for a failed assertion.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Output;

/// `fixtures/<dir>` at the workspace root.
pub fn fixtures(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("fixtures")
        .join(dir)
}

/// A UDP port free right now on loopback.
pub fn free_port() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.local_addr().expect("addr").port()
}

/// SIPp's exit code, the end of its stdout and its stderr.
pub fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n"),
        String::from_utf8_lossy(&output.stderr)
    )
}
