//! The cold-backlog bench still builds and runs: a few thousand messages through its three
//! phases, every one checked (the bench panics on a lost, repeated or damaged message). No
//! timing is asserted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../benches/cold_backlog.rs"]
mod cold_backlog;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cold_backlog_bench_runs_a_few_thousand_messages() {
    let dir = tempfile::tempdir().unwrap();
    let settings = cold_backlog::Settings {
        messages: 5_000,
        hot_messages: 1_000,
        body: 1024,
        queues: 4,
        senders: 6,
        send_batch: 64,
        hot_senders: 16,
        batch: 256,
        drop_cache: true,
        dir: dir.path().to_owned(),
        verbose: false,
    };
    let report = cold_backlog::run(&settings).await;
    assert!(report.hot_rate > 0.0 && report.fill_rate > 0.0 && report.cold_rate > 0.0);
    assert_eq!(report.marks.len(), 10, "{report:?}");
    assert_eq!(report.marks.last().map(|m| m.consumed), Some(5_000));
    assert!(report.marks.iter().all(|m| m.rss_kib > 0), "{report:?}");
}
