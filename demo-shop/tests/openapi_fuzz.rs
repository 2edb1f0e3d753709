//! The OpenAPI document tells the truth: schemathesis (from PyPI) drives the live shop with
//! requests generated from the document, valid and invalid, and checks every answer: no 5xx, no
//! status the document does not list, no schema-valid request rejected as invalid, no
//! schema-invalid request accepted, every body as documented, the admin routes' token enforced.
//! Skipped, loudly, without `schemathesis` on the PATH, unless `MQ_REQUIRE_SCHEMATHESIS=1`
//! (`.ci/run` installs it). `MQ_SCHEMATHESIS_SEED=<n>` replays a printed run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

use support::Shop;

fn schemathesis() -> Option<String> {
    let found = Command::new("schemathesis")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("MQ_REQUIRE_SCHEMATHESIS").map_or(true, |v| v != "1"),
            "MQ_REQUIRE_SCHEMATHESIS=1 but schemathesis is not on the PATH (pip install schemathesis)"
        );
        eprintln!("\n*** SKIPPED: schemathesis is not installed (pip install schemathesis) ***\n");
        return None;
    }
    Some("schemathesis".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_holds_for_generated_requests() {
    let Some(bin) = schemathesis() else { return };
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::start(dir.path(), &[("MQ__ADMIN__TOKEN", "st-token")]);
    let seed = std::env::var("MQ_SCHEMATHESIS_SEED").unwrap_or_else(|_| {
        (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            % 1_000_000_007)
            .to_string()
    });
    println!("schemathesis seed {seed} (MQ_SCHEMATHESIS_SEED={seed} replays it)");
    let url = format!("{}/openapi.json", shop.base);
    // Its own files (the .hypothesis database) go under the test's directory.
    let cwd = dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .args(["run", &url, "--checks", "all", "--max-examples", "30"])
            .args(["--seed", &seed, "--no-color", "--workers", "1"])
            .args(["-H", "Authorization: Bearer st-token"])
            .current_dir(&cwd)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found what the document does not say:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = report.lines().collect();
    println!("{}", lines[lines.len().saturating_sub(12)..].join("\n"));
    shop.stop();
}
