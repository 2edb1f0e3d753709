//! Property: whatever single byte of the commit log is damaged, the embedded broker serves every
//! other message intact, never the damaged one, and reports the damage.

// A failed step is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use mq_core::embedded::{EmbeddedBroker, EmbeddedConfig};
use mq_core::testkit::drain;
use mq_core::{Broker, ConsumeFrom, ConsumerOptions, Message, SendOptions, Subscription};
use proptest::prelude::*;

fn config(dir: &Path) -> EmbeddedConfig {
    EmbeddedConfig::new(dir)
        .max_message_size(4096)
        .segment_size(72 * 1024)
        .consume_queue_entries(32)
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("commitlog"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

/// (segment, start, end) of every record, walking the size fields of the intact log.
fn extents(dir: &Path) -> Vec<(PathBuf, usize, usize)> {
    let mut out = Vec::new();
    for seg in segments(dir) {
        let bytes = std::fs::read(&seg).unwrap();
        let mut at = 0;
        while at + 8 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
            out.push((seg.clone(), at, at + len));
            at += len;
        }
    }
    out
}

fn run_case(bodies: Vec<Vec<u8>>, victim: prop::sample::Index, flip: u8, rebuild: bool) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let broker = EmbeddedBroker::open(config(dir.path())).await.unwrap();
        for b in &bodies {
            broker
                .send(Message::new("p", b.clone()), SendOptions::queue(0))
                .await
                .unwrap();
        }
        broker.shutdown().await.unwrap();
        drop(broker);

        let records = extents(dir.path());
        assert_eq!(records.len(), bodies.len());
        let total: usize = records.iter().map(|(_, s, e)| e - s).sum();
        let mut target = victim.index(total);
        let mut damaged = 0;
        for (i, (_, s, e)) in records.iter().enumerate() {
            if target < e - s {
                damaged = i;
                break;
            }
            target -= e - s;
        }
        let (seg, start, _) = &records[damaged];
        let mut bytes = std::fs::read(seg).unwrap();
        bytes[start + target] ^= flip;
        std::fs::write(seg, bytes).unwrap();
        if rebuild {
            std::fs::remove_dir_all(dir.path().join("consumequeue")).unwrap();
            std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
        }

        let broker = EmbeddedBroker::open(config(dir.path())).await.unwrap();
        let consumer = broker
            .subscribe(
                Subscription::new("p", "check"),
                ConsumerOptions::new().consume_from(ConsumeFrom::First),
            )
            .await
            .unwrap();
        let mut got = drain(&*consumer, bodies.len() - 1, Duration::from_secs(5), true).await;
        got.extend(drain(&*consumer, 1, Duration::from_millis(100), true).await);
        let want: Vec<Vec<u8>> = bodies
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != damaged)
            .map(|(_, b)| b.clone())
            .collect();
        let served: Vec<Vec<u8>> = got.iter().map(|d| d.message.body.to_vec()).collect();
        assert_eq!(served, want, "record {damaged} damaged at byte {target}");
        // A last record whose size field now claims more than the file holds looks exactly like
        // a torn write, which recovery cuts without calling it damage.
        let torn_lookalike = rebuild && damaged == records.len() - 1 && (4..8).contains(&target);
        if !torn_lookalike {
            assert!(!broker.corruptions().is_empty(), "damage not reported");
        }
        broker.shutdown().await.unwrap();
    });
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn one_damaged_byte_costs_one_message(
        sizes in proptest::collection::vec(0usize..3000, 2..60),
        victim in any::<prop::sample::Index>(),
        flip in 1u8..=255,
        rebuild in any::<bool>(),
    ) {
        let bodies = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let mut b = format!("msg-{i:04}|").into_bytes();
                b.extend((0..*n).map(|j| (j * 31 + i * 7) as u8));
                b
            })
            .collect();
        run_case(bodies, victim, flip, rebuild);
    }
}
