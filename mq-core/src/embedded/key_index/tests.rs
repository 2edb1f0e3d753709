//! The key index's own checks: sealed files round-trip, and damage to them (before or after
//! open) is reported, rebuilt from the log and never answers a lookup.
//!
//! The damage cases flip bytes at seeded random places; the seed is printed, and
//! `MQ_INDEX_SEED=<seed>` replays it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::sealed::Sealed;
use super::{id_hash, key_hash, Entry};
use crate::embedded::{EmbeddedBroker, EmbeddedConfig};
use crate::message::{Message, MessageId};
use crate::{Broker, SendOptions};

/// SplitMix64, seeded.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn seed(test: &str) -> u64 {
    let seed = std::env::var("MQ_INDEX_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| u64::from(MessageId::new().as_u128() as u32));
    println!("{test}: seed={seed} (replay with MQ_INDEX_SEED={seed})");
    seed
}

#[test]
fn a_sealed_file_finds_every_entry_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(seed("sealed_round_trip"));
    // Several blocks, with runs of one hash crossing block boundaries.
    let mut entries = Vec::new();
    for i in 0..2000u64 {
        let hash = if i % 7 == 0 { 42 } else { rng.next() };
        entries.push(Entry {
            hash,
            position: i * 100,
        });
    }
    let written = Sealed::write(dir.path(), 0, 200_000, &entries).unwrap();
    let opened = Sealed::open(&written.path).unwrap();
    assert_eq!((opened.start, opened.end), (0, 200_000));
    for e in &entries {
        let mut want: Vec<u64> = entries
            .iter()
            .filter(|x| x.hash == e.hash)
            .map(|x| x.position)
            .collect();
        want.sort_unstable();
        let mut got = opened.search(e.hash).unwrap();
        got.sort_unstable();
        assert_eq!(got, want, "hash {}", e.hash);
    }
    assert!(opened.search(7).unwrap().is_empty());
    assert_eq!(opened.len(), std::fs::metadata(&opened.path).unwrap().len());
}

#[test]
fn ids_and_keys_never_share_a_hash_domain() {
    let id = MessageId::from_u128(0x1234);
    assert_ne!(id_hash(id), key_hash(&id.to_string()));
    // Stored on disk: the function must never change.
    assert_eq!(key_hash("order-1"), key_hash("order-1"));
    assert_ne!(key_hash("order-1"), key_hash("order-2"));
}

fn config(dir: &Path) -> EmbeddedConfig {
    // Small parts: a few hundred sends make a dozen sealed files.
    EmbeddedConfig::new(dir).index_part_entries(64)
}

/// Sends `n` messages with two keys each; returns (id, first key) of each.
async fn fill(broker: &EmbeddedBroker, n: usize) -> Vec<(MessageId, String)> {
    fill_with(broker, n, 0).await
}

/// As [`fill`], with `pad` more bytes of body per message.
async fn fill_with(broker: &EmbeddedBroker, n: usize, pad: usize) -> Vec<(MessageId, String)> {
    let mut sent = Vec::new();
    for i in 0..n {
        let key = format!("order-{i}");
        let m = Message::new("lookups", format!("body-{i}{}", "x".repeat(pad)))
            .with_key(&key)
            .with_key(format!("customer-{}", i % 10));
        let r = broker.send(m, SendOptions::new()).await.unwrap();
        sent.push((r.message_id, key));
    }
    sent
}

async fn assert_all_found(broker: &EmbeddedBroker, sent: &[(MessageId, String)]) {
    for (id, key) in sent {
        let by_id = broker.messages_by_id(*id).await.unwrap();
        assert_eq!(by_id.len(), 1, "{id}");
        assert_eq!(by_id[0].id, *id);
        let by_key = broker.messages_by_key(key, None, 10).await.unwrap();
        assert_eq!(by_key.iter().map(|v| v.id).collect::<Vec<_>>(), vec![*id]);
    }
    let customers = broker
        .messages_by_key("customer-3", None, 1000)
        .await
        .unwrap();
    assert_eq!(customers.len(), (sent.len() + 6) / 10);
    assert!(customers
        .iter()
        .all(|v| v.keys.contains(&"customer-3".to_owned())));
}

fn index_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("index"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "idx"))
        .collect();
    files.sort();
    files
}

/// Flips one to three bytes of `path` at seeded places from `from` on.
fn flip(path: &Path, from: u64, rng: &mut Rng) {
    let mut bytes = std::fs::read(path).unwrap();
    let len = bytes.len() as u64;
    assert!(
        len > from,
        "{} is too short to damage past {from}",
        path.display()
    );
    for _ in 0..=rng.below(3) {
        let at = (from + rng.below(len - from)) as usize;
        bytes[at] ^= 1 + rng.below(255) as u8;
    }
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_sealed_file_is_reported_rebuilt_and_lookups_still_answer() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(seed("damaged_sealed_file"));
    let broker = EmbeddedBroker::open(config(dir.path())).await.unwrap();
    let sent = fill(&broker, 400).await;
    broker.shutdown().await.unwrap();
    drop(broker);
    for round in 0..4 {
        let files = index_files(dir.path());
        assert!(files.len() >= 4, "only {} sealed files", files.len());
        let victim = files[rng.below(files.len() as u64) as usize].clone();
        flip(&victim, 0, &mut rng);
        let broker = EmbeddedBroker::open(config(dir.path())).await.unwrap();
        let repairs = broker.key_index_repairs();
        assert_eq!(repairs.len(), 1, "round {round}: {repairs:?}");
        assert_eq!(repairs[0].segment, victim);
        assert!(broker.corruptions().is_empty(), "the log itself is intact");
        assert_all_found(&broker, &sent).await;
        broker.shutdown().await.unwrap();
    }
    // The rebuilt files verify: a clean reopen repairs nothing.
    let broker = EmbeddedBroker::open(config(dir.path())).await.unwrap();
    assert!(broker.key_index_repairs().is_empty());
    assert_all_found(&broker, &sent).await;
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_after_open_is_caught_by_a_lookup_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(seed("damage_after_open"));
    let broker: Arc<EmbeddedBroker> = EmbeddedBroker::open(config(dir.path())).await.unwrap();
    let sent = fill(&broker, 300).await;
    broker.shutdown().await.unwrap();
    drop(broker);
    let broker = EmbeddedBroker::open(config(dir.path())).await.unwrap();
    assert!(broker.key_index_repairs().is_empty());
    // Damage the entry blocks of every sealed file (past the header and block table, which
    // are only read at open) while the broker has them open.
    for file in index_files(dir.path()) {
        let bytes = std::fs::read(&file).unwrap();
        let blocks = u32::from_le_bytes(bytes[32..36].try_into().unwrap()) as u64;
        flip(&file, 48 + 16 * blocks, &mut rng);
    }
    assert_all_found(&broker, &sent).await;
    assert!(
        !broker.key_index_repairs().is_empty(),
        "the damaged blocks were reported"
    );
    assert!(broker.corruptions().is_empty(), "the log itself is intact");
    broker.shutdown().await.unwrap();
    let broker = EmbeddedBroker::open(config(dir.path())).await.unwrap();
    assert!(
        broker.key_index_repairs().is_empty(),
        "rebuilt files verify"
    );
    assert_all_found(&broker, &sent).await;
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_index_off_lookups_read_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let broker = EmbeddedBroker::open(config(dir.path()).message_index(false))
        .await
        .unwrap();
    let sent = fill(&broker, 50).await;
    assert!(broker.key_index_footprint().is_none());
    assert_all_found(&broker, &sent).await;
    broker.shutdown().await.unwrap();
    // Turned on later, the index is built from the log at open.
    let broker = EmbeddedBroker::open(config(dir.path())).await.unwrap();
    assert!(broker.key_index_footprint().is_some());
    assert_all_found(&broker, &sent).await;
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_the_index_files_of_deleted_segments() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path())
        .max_message_size(4096)
        .segment_size(128 * 1024)
        .retention(
            std::time::Duration::ZERO,
            std::time::Duration::from_secs(3600),
        );
    let broker = EmbeddedBroker::open(config).await.unwrap();
    let sent = fill_with(&broker, 600, 1024).await;
    let before = index_files(dir.path()).len();
    // No group ever subscribed: every segment but the one being written may go.
    let report = broker.run_retention().unwrap();
    assert!(report.segments_deleted > 0);
    let after = index_files(dir.path());
    assert!(
        after.len() < before,
        "{} files before, {} after",
        before,
        after.len()
    );
    let mut gone = 0;
    for (id, key) in &sent {
        let by_id = broker.messages_by_id(*id).await.unwrap();
        let by_key = broker.messages_by_key(key, None, 10).await.unwrap();
        assert_eq!(by_id.len(), by_key.len(), "{id}");
        gone += usize::from(by_id.is_empty());
    }
    assert!(
        gone > 0 && gone < sent.len(),
        "{gone} of {} gone",
        sent.len()
    );
    broker.shutdown().await.unwrap();
}
