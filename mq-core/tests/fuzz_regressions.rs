//! Every input that made a `cargo fuzz` target in `fuzz/` fail, replayed through the same
//! checks (`fuzz/src/*.rs` are compiled in here). Inputs live under `tests/fuzz_regressions/`
//! (`<target>/<name>`); `fuzz/README.md` says how they were found and what they break.
//!
//! Each case runs in a child process (this binary again, with `MQ_FUZZ_REPLAY` set) so that an
//! allocation refused by the cap (an abort), a panic on a broker thread or a hang fails that
//! case alone.

// A failed step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../fuzz/src/alloc_cap.rs"]
mod alloc_cap;
#[path = "../../fuzz/src/record.rs"]
mod record;
#[path = "../../fuzz/src/recovery.rs"]
mod recovery;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use recovery::Op;

#[global_allocator]
static ALLOC: alloc_cap::CappedAlloc = alloc_cap::CappedAlloc::new();

/// The caps of the fuzz targets (`fuzz/fuzz_targets/*.rs`).
const RECORD_CAP: usize = 1 << 20;
const RECOVERY_CAP: usize = 16 << 20;
/// A case that runs longer than this hangs (each takes well under a second).
const CHILD_LIMIT: Duration = Duration::from_secs(120);

fn input(target: &str, name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_regressions")
        .join(target)
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Replays `tests/fuzz_regressions/<target>/<name>` in a child; `test` is the calling test.
fn replay(test: &str, target: &str, name: &str) {
    let data = input(target, name);
    if std::env::var_os("MQ_FUZZ_REPLAY").is_some() {
        match target {
            "record_decode" => {
                ALLOC.set_cap(RECORD_CAP);
                record::run(&data);
            }
            "recovery" => {
                ALLOC.set_cap(RECOVERY_CAP);
                // The input as found, then the same damage named by path: the bytes pick a
                // file by its index, which moves when the directory's layout changes.
                recovery::run(&data);
                recovery::run_named(&named(name));
            }
            _ => panic!("unknown fuzz target {target}"),
        }
        return;
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("MQ_FUZZ_REPLAY", "1")
        .env_remove("MQ_FUZZ_TOLERATE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > CHILD_LIMIT {
            child.kill().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!("{target}/{name} failed ({s}):\n{stderr}"),
        None => panic!("{target}/{name} hung for {CHILD_LIMIT:?}:\n{stderr}"),
    }
}

/// The damage of each stored `recovery` input, by path (as `fuzz/triage.sh` prints it).
fn named(name: &str) -> Vec<(&'static str, Op)> {
    match name {
        "undamaged-smoke" => vec![],
        "cq-segment-deleted" => vec![("consumequeue/fz-b/1/00000000000000000000", Op::Delete)],
        "cq-entry-pointing-at-another-topic" => vec![(
            "consumequeue/fz-b/0/00000000000000000000",
            Op::Word { at: 0, value: 0 },
        )],
        "cq-first-entry-position-zeroed" => vec![(
            "consumequeue/fz-a/1/00000000000000000000",
            Op::Word { at: 1, value: 0 },
        )],
        "cq-entry-flipped" => vec![(
            "consumequeue/fz-b/1/00000000000000000000",
            Op::Flip {
                at: 21,
                n: 4,
                value: 92,
            },
        )],
        "cq-entry-position-past-log-silent" => vec![(
            "consumequeue/fz-c/0/00000000000000000000",
            Op::Word { at: 127, value: 1 },
        )],
        "cq-entry-size-zeroed-silent" => vec![(
            "consumequeue/fz-b/1/00000000000000000000",
            Op::Word { at: 246, value: 0 },
        )],
        "commitlog-first-segment-deleted-silent" => {
            vec![("commitlog/00000000000000000000", Op::Delete)]
        }
        _ => panic!("no named damage for recovery/{name}"),
    }
}

macro_rules! cases {
    ($($(#[$meta:meta])* $test:ident: $target:literal / $name:literal;)*) => {
        $(
            $(#[$meta])*
            #[test]
            fn $test() {
                replay(stringify!($test), $target, $name);
            }
        )*

        /// Every stored input has a test above.
        #[test]
        fn every_stored_input_is_replayed() {
            let known: Vec<String> = vec![$(format!("{}/{}", $target, $name)),*];
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions");
            for target in std::fs::read_dir(&root).unwrap() {
                let target = target.unwrap();
                for file in std::fs::read_dir(target.path()).unwrap() {
                    let name = format!(
                        "{}/{}",
                        target.file_name().to_string_lossy(),
                        file.unwrap().file_name().to_string_lossy()
                    );
                    assert!(known.contains(&name), "{name} has no test in fuzz_regressions.rs");
                }
            }
        }
    };
}

cases! {
    /// Not a finding: a well-framed record, so the `record_decode` checks run in the suite.
    record_decode_framed_record_smoke: "record_decode" / "framed-record-smoke";
    /// Not a finding: no damage at all, so the `recovery` checks run in the suite.
    recovery_undamaged_smoke: "recovery" / "undamaged-smoke";
    /// A deleted consume-queue segment (`fz-b` queue 1, offsets 0..16): its 16 messages,
    /// intact in the commit log, are never served; the index is not rebuilt from the log.
    recovery_cq_segment_deleted: "recovery" / "cq-segment-deleted";
    /// Four bytes flipped across the first two entries of a consume-queue segment: the
    /// message behind the damaged entry was reported but not served, though its commit-log
    /// record is intact (now the read re-finds the record in the log).
    recovery_cq_entry_flipped: "recovery" / "cq-entry-flipped";
    /// Bytes 1..5 of the first entry of an index segment zeroed: its position moves back
    /// inside the log, plausibly; with no entry before it the search for its record had no
    /// start (now it starts where the log does).
    recovery_cq_first_entry_position_zeroed: "recovery" / "cq-first-entry-position-zeroed";
    /// The first entry of `fz-b` queue 0 made to point at position 0: the first record of
    /// the log, `fz-a` queue 0 offset 0, was served as `fz-b`'s message (only queue and offset
    /// were checked; now the record's topic is too).
    recovery_cq_entry_pointing_at_another_topic: "recovery" / "cq-entry-pointing-at-another-topic";
    /// Entry 5 of an index segment gets position byte 7 = 1 and size bytes 0..3 = 0 (an
    /// entry pointing far past the log): the message is skipped silently (no corruption
    /// reported), though its commit-log record is intact.
    recovery_cq_entry_position_past_log_silent: "recovery" / "cq-entry-position-past-log-silent";
    /// Entry 10 of an index segment gets its size field's low two bytes zeroed: the message is
    /// skipped silently, its commit-log record intact.
    recovery_cq_entry_size_zeroed_silent: "recovery" / "cq-entry-size-zeroed-silent";
    /// The oldest commit-log segment deleted: 242 messages gone, `corruptions()` empty.
    recovery_commitlog_first_segment_deleted_silent: "recovery" / "commitlog-first-segment-deleted-silent";
}
