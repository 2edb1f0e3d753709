//! The application-path bench still builds and runs: a few hundred messages through both of
//! its sides, every one seen (the bench fails if one is lost). No timing is asserted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../benches/app_path.rs"]
mod app_path;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_path_bench_runs_a_few_hundred_messages() {
    let dir = tempfile::tempdir().unwrap();
    let load = app_path::Load {
        messages: 320,
        senders: 16,
        rate: None,
    };
    for flush in ["async", "sync"] {
        let figures = app_path::run_once(dir.path(), flush, load, 8).await;
        for f in figures {
            assert!(f.rate > 0.0 && f.p99_ms >= f.p50_ms, "{flush}: {f:?}");
        }
        let traced = app_path::run_trace_pair(dir.path(), flush, load, 8, flush == "sync").await;
        for f in traced {
            assert!(f.rate > 0.0 && f.p99_ms >= f.p50_ms, "{flush} trace: {f:?}");
        }
    }
}
