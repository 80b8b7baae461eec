//! The published Python SDK 0.1.0 and its CLI work, unchanged, against the
//! server (`./dev setup` installs `callingbox[cli]==0.1.0`).

mod common;

use common::{TestServer, database_urls};

#[tokio::test(flavor = "multi_thread")]
async fn the_python_sdk_0_1_0_and_its_cli_work_unchanged() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/check_sdk_0_1_0.py");
    for (backend, url) in database_urls().await {
        let s = TestServer::start(backend, &url).await;
        let home = std::env::temp_dir().join(format!(
            "callingbox-sdk-home-{backend}-{}",
            std::process::id()
        ));
        let output = tokio::process::Command::new("python3")
            .arg(script)
            .env("CALLINGBOX_BASE_URL", &s.base)
            .env("CALLINGBOX_API_KEY", &s.key)
            // The SDK CLI's config file must not come from the machine.
            .env("XDG_CONFIG_HOME", &home)
            .output()
            .await
            .expect("python3 runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !stderr.contains("No module named 'callingbox'"),
            "the SDK is not installed: run ./dev setup (pip install 'callingbox[cli]==0.1.0')"
        );
        assert!(
            output.status.success(),
            "{backend}: {}\n{stderr}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
}
