//! The parent's side of the crash harness: the event lines the children print, the ledger they
//! fill and the invariants checked over it.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

/// Marks an event line; libtest may print its own text before it on the same line.
pub const EVENT: &str = "@@H";

/// The clustering group (concurrent on two topics, orderly on the orderly topic).
pub const GROUP_CLUSTER: &str = "hx-cluster";
/// The broadcasting group, consuming under one fixed instance name.
pub const GROUP_BROADCAST: &str = "hx-broadcast";
/// Plain, delayed and nacked messages.
pub const TOPIC_PLAIN: &str = "hx-plain";
/// Orderly messages (sharding keys).
pub const TOPIC_ORDER: &str = "hx-order";
/// Transactional messages.
pub const TOPIC_TX: &str = "hx-tx";

/// A delivery this much before its due time still counts as on time: the broker's clock is
/// the wall clock anchored at open and advanced by tokio's, and both round to milliseconds.
pub const EARLY_TOLERANCE_MS: u64 = 5;

/// SplitMix64: small, seedable, the same sequence everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }

    /// True `percent` times in a hundred.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.range(0, 100) < percent
    }
}

/// The body of a message: `id|kind|aux|padding|crc`, the CRC32C (hex) covering everything
/// before the last `|`, so a delivered body proves itself intact.
pub fn make_body(id: &str, kind: char, aux: &str, pad: usize) -> String {
    let salt = crc32c::crc32c(id.as_bytes()) as usize;
    let padding: String = (0..pad)
        .map(|i| char::from(b'a' + ((i + salt) % 26) as u8))
        .collect();
    let head = format!("{id}|{kind}|{aux}|{padding}");
    let crc = crc32c::crc32c(head.as_bytes());
    format!("{head}|{crc:08x}")
}

/// A body that passed its own checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body {
    /// The message's harness id (`r<run>-<n>`).
    pub id: String,
    /// `p` plain, `d` delayed, `n` nacked once, `o` orderly, `c`/`r` transaction committed or
    /// rolled back by the producer, `C`/`R` left to check-back, which commits or rolls back.
    pub kind: char,
    /// Per kind: the retry delay in ms (`n`), the sharding key (`o`), else `-`.
    pub aux: String,
}

/// Parses and verifies a body; `None` if it fails its checksum or is malformed.
pub fn parse_body(bytes: &[u8]) -> Option<Body> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (head, crc) = text.rsplit_once('|')?;
    if u32::from_str_radix(crc, 16).ok()? != crc32c::crc32c(head.as_bytes()) {
        return None;
    }
    let mut parts = head.splitn(4, '|');
    let id = parts.next()?.to_owned();
    let kind = parts.next()?.chars().next()?;
    let aux = parts.next()?.to_owned();
    Some(Body { id, kind, aux })
}

/// Whether a transactional kind ends committed.
pub fn commits(kind: char) -> bool {
    matches!(kind, 'c' | 'C')
}

/// How a kill was timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillClass {
    /// A few ms after spawn: often during open (recovery) itself.
    DuringOpen,
    /// 50-300 ms after open: before the first flush tick (500 ms) and offset persist (5 s).
    Early,
    /// 0.6-5.6 s after open: across flush ticks, sometimes across the first offset persist.
    Late,
}

#[derive(Debug)]
struct Attempt {
    run: u32,
    seq: u64,
    topic: String,
    kind: char,
    due_ms: u64,
    crc: String,
    aux: String,
    /// The send (or prepare) returned Ok.
    ok: bool,
    /// The broker's message id, printed with `SENT` (keyed sends only).
    message_id: Option<String>,
}

/// Everything the children reported, and the violations seen while reading it.
#[derive(Debug, Default)]
pub struct Ledger {
    attempts: HashMap<String, Attempt>,
    acked: [HashSet<String>; 2],
    deliveries: [HashMap<String, u32>; 2],
    delivered_runs: [HashMap<String, Vec<u32>>; 2],
    nack_due: HashMap<String, u64>,
    nacks: HashMap<String, u32>,
    /// Orderly group: per (run, key), the (run, seq) of the last acknowledged message.
    order_last: HashMap<(u32, String), (u32, u64)>,
    /// Time from spawn to an open broker, per child that got that far (ms).
    pub reopen_ms: Vec<u64>,
    /// Duration of `EmbeddedBroker::open` alone (ms).
    pub open_call_ms: Vec<u64>,
    /// Kills by class.
    pub kills: Vec<KillClass>,
    /// Kills that landed before the child printed `OPENED`.
    pub kills_before_open: u32,
    early: Vec<String>,
    phantom: Vec<String>,
    rolled_back: Vec<String>,
    corrupt: Vec<String>,
    order: Vec<String>,
    corruption_reports: Vec<String>,
    errors: Vec<String>,
    /// Failures of the harness run itself (a child that died by itself, a drain that hung).
    pub failures: Vec<String>,
    committed: u64,
    checked: u64,
    end_failed: u64,
    garbled: u64,
    delivered_total: u64,
    /// The final child printed `DRAINED`.
    pub drained: bool,
    /// Acknowledged sends a reopened child looked up by id and by key.
    pub lookups_checked: u64,
    /// Where every line goes as read, prefixed by its run (`MQ_CRASH_KEEP=1`).
    pub log: Option<std::io::BufWriter<std::fs::File>>,
}

fn group_index(group: &str) -> Option<usize> {
    match group {
        GROUP_CLUSTER => Some(0),
        GROUP_BROADCAST => Some(1),
        _ => None,
    }
}

fn seq_of(id: &str) -> (u32, u64) {
    let parse = || -> Option<(u32, u64)> {
        let (run, n) = id.strip_prefix('r')?.split_once('-')?;
        Some((run.parse().ok()?, n.parse().ok()?))
    };
    parse().unwrap_or((u32::MAX, u64::MAX))
}

fn push(list: &mut Vec<String>, text: String) {
    list.push(text);
}

impl Ledger {
    /// The acknowledged keyed sends to look up after the next reopen, as `key id topic`
    /// lines: every one of run `last` (the run just killed) up to `recent`, and `older`
    /// drawn by `rng` from the runs before.
    pub fn lookups(&self, last: u32, recent: usize, older: usize, rng: &mut Rng) -> String {
        let mut keyed: Vec<(&String, &Attempt)> = self
            .attempts
            .iter()
            .filter(|(_, a)| a.ok && a.message_id.is_some())
            .collect();
        // By id, so that the draw depends on the seed and the runs alone.
        keyed.sort_by_key(|(_, a)| (a.run, a.seq));
        let (latest, before): (Vec<_>, Vec<_>) =
            keyed.into_iter().partition(|(_, a)| a.run == last);
        let mut chosen: Vec<&(&String, &Attempt)> = latest.iter().rev().take(recent).collect();
        for _ in 0..older.min(before.len()) {
            chosen.push(&before[rng.range(0, before.len() as u64) as usize]);
        }
        let mut out = String::new();
        for (key, a) in chosen {
            let id = a.message_id.as_deref().unwrap_or("-");
            let _ = writeln!(out, "{key} {id} {}", a.topic);
        }
        out
    }

    /// Feeds one line printed by the child of run `run`; returns whether it was `OPENED`.
    pub fn feed(&mut self, run: u32, line: &str) -> bool {
        if let Some(log) = self.log.as_mut() {
            use std::io::Write as _;
            let _ = writeln!(log, "{run} {line}");
        }
        let Some(at) = line.find(EVENT) else {
            return false;
        };
        let rest = line[at + EVENT.len()..].trim();
        let f: Vec<&str> = rest.split(' ').collect();
        let ok = self.feed_fields(run, &f);
        if ok.is_none() {
            // A line cut by the kill, or a format this ledger does not know.
            self.garbled += 1;
        }
        ok.unwrap_or(false)
    }

    fn feed_fields(&mut self, run: u32, f: &[&str]) -> Option<bool> {
        match *f.first()? {
            "OPENED" => {
                self.open_call_ms.push(f.get(2)?.parse().ok()?);
                self.reopen_ms.push(f.get(3)?.parse().ok()?);
                let corruptions: u64 = f.get(4)?.parse().ok()?;
                if corruptions > 0 {
                    push(
                        &mut self.corruption_reports,
                        format!("run {run}: {corruptions} corruptions reported at open"),
                    );
                }
                return Some(true);
            }
            "SENDING" => {
                let id = f.get(1)?.to_string();
                let (sent_run, seq) = seq_of(&id);
                self.attempts.insert(
                    id,
                    Attempt {
                        run: sent_run,
                        seq,
                        topic: f.get(2)?.to_string(),
                        kind: f.get(3)?.chars().next()?,
                        due_ms: f.get(4)?.parse().ok()?,
                        crc: f.get(5)?.to_string(),
                        aux: f.get(6)?.to_string(),
                        ok: false,
                        message_id: None,
                    },
                );
            }
            "SENT" | "PREPARED" => {
                let attempt = self.attempts.get_mut(*f.get(1)?)?;
                attempt.ok = true;
                attempt.message_id = f.get(2).map(|id| id.to_string());
            }
            "LOOKUPS" => self.lookups_checked += f.get(1)?.parse::<u64>().ok()?,
            "COMMITTED" => self.committed += 1,
            "CHECKED" => self.checked += 1,
            "ENDFAILED" => self.end_failed += 1,
            "ROLLEDBACK" | "UNKNOWN" | "NACKED" | "SUBSCRIBED" => {}
            "NACKING" => {
                let id = f.get(2)?.to_string();
                let due: u64 = f.get(3)?.parse().ok()?;
                let entry = self.nack_due.entry(id.clone()).or_insert(due);
                *entry = (*entry).min(due);
                *self.nacks.entry(id).or_default() += 1;
            }
            "DELIVERED" => self.delivered(run, f)?,
            "ACKED" => {
                let g = group_index(f.get(1)?)?;
                let id = f.get(2)?.to_string();
                if g == 0 {
                    if let Some(a) = self.attempts.get(&id) {
                        if a.topic == TOPIC_ORDER {
                            let key = (run, a.aux.clone());
                            let at = (a.run, a.seq);
                            let last = self.order_last.entry(key).or_insert(at);
                            *last = (*last).max(at);
                        }
                    }
                }
                self.acked[g].insert(id);
            }
            "CORRUPTION" => push(
                &mut self.corruption_reports,
                format!("run {run}: {}", f[1..].join(" ")),
            ),
            "ERROR" => push(&mut self.errors, format!("run {run}: {}", f[1..].join(" "))),
            "DRAINED" => {
                self.drained = true;
                let (delays, txs) = (f.get(1)?, f.get(2)?);
                if *delays != "0" || *txs != "0" {
                    push(
                        &mut self.failures,
                        format!(
                            "drain ended with {delays} pending delays, {txs} pending transactions"
                        ),
                    );
                }
            }
            _ => return None,
        }
        Some(false)
    }

    /// `DELIVERED group id now_ms body_ok crc reconsume`.
    fn delivered(&mut self, run: u32, f: &[&str]) -> Option<()> {
        let group = *f.get(1)?;
        let g = group_index(group)?;
        let id = f.get(2)?.to_string();
        let now: u64 = f.get(3)?.parse().ok()?;
        let body_ok = *f.get(4)? == "1";
        let crc = *f.get(5)?;
        let reconsume: u32 = f.get(6)?.parse().ok()?;
        self.delivered_total += 1;
        *self.deliveries[g].entry(id.clone()).or_default() += 1;
        self.delivered_runs[g]
            .entry(id.clone())
            .or_default()
            .push(run);
        if !body_ok {
            push(
                &mut self.corrupt,
                format!("run {run}: {group} got a body failing its checksum (id field {id:?})"),
            );
            return Some(());
        }
        let Some(a) = self.attempts.get(&id) else {
            push(
                &mut self.phantom,
                format!("run {run}: {group} got {id}, never sent"),
            );
            return Some(());
        };
        if a.crc != crc {
            push(
                &mut self.corrupt,
                format!(
                    "run {run}: {group} got {id} with body crc {crc}, sent {}",
                    a.crc
                ),
            );
        }
        if matches!(a.kind, 'r' | 'R') {
            push(
                &mut self.rolled_back,
                format!(
                    "run {run}: {group} got {id}, a rolled-back half (kind {})",
                    a.kind
                ),
            );
        }
        if a.due_ms > 0 && now + EARLY_TOLERANCE_MS < a.due_ms {
            push(
                &mut self.early,
                format!(
                    "run {run}: {group} got delayed {id} (sent in run {}) {} ms before its due time",
                    a.run,
                    a.due_ms - now
                ),
            );
        }
        if g == 0 && reconsume > 0 {
            match self.nack_due.get(&id) {
                None => push(
                    &mut self.early,
                    format!(
                        "run {run}: {group} got {id} with reconsume count {reconsume}, never nacked"
                    ),
                ),
                Some(&due) if now + EARLY_TOLERANCE_MS < due => push(
                    &mut self.early,
                    format!(
                        "run {run}: {group} got retry of {id} (sent in run {}) {} ms before its due time",
                        a.run,
                        due - now
                    ),
                ),
                Some(_) => {}
            }
        }
        if g == 1 && reconsume > 0 {
            // The broadcasting group never fails a delivery: a retry here is another group's.
            push(
                &mut self.phantom,
                format!("run {run}: {group} got {id} with reconsume count {reconsume}"),
            );
        }
        if g == 0 && a.topic == TOPIC_ORDER {
            if let Some(&last) = self.order_last.get(&(run, a.aux.clone())) {
                if (a.run, a.seq) < last {
                    push(
                        &mut self.order,
                        format!(
                            "run {run}: orderly {group} got {id} of key {} after acknowledging r{}-{}",
                            a.aux, last.0, last.1
                        ),
                    );
                }
            }
        }
        Some(())
    }

    /// Messages every group must have acknowledged: sends that returned Ok and prepared halves
    /// that commit (by the producer or by check-back).
    fn expected(&self) -> impl Iterator<Item = (&String, &Attempt)> {
        self.attempts
            .iter()
            .filter(|(_, a)| a.ok && (a.topic != TOPIC_TX || commits(a.kind)))
    }

    /// The summary and the violations; `Ok` if every invariant held.
    pub fn verdict(&self, label: &str, seed: u64) -> Result<String, String> {
        let groups = [GROUP_CLUSTER, GROUP_BROADCAST];
        let mut lost = Vec::new();
        let mut messages = 0u64;
        let mut by_kind: HashMap<char, u64> = HashMap::new();
        for (id, a) in self.expected() {
            messages += 1;
            *by_kind.entry(a.kind).or_default() += 1;
            for (g, name) in groups.iter().enumerate() {
                if !self.acked[g].contains(id) {
                    let runs = self.delivered_runs[g].get(id);
                    lost.push(format!(
                        "{name} never acknowledged {id} (kind {}, topic {}, sent in run {}, delivered in runs {:?})",
                        a.kind, a.topic, a.run, runs
                    ));
                }
            }
        }
        lost.sort();
        // Which groups and kinds lose, at a glance (the list below shows only a few).
        let mut lost_by: std::collections::BTreeMap<String, u64> = Default::default();
        for (id, a) in self.expected() {
            for (g, name) in groups.iter().enumerate() {
                if !self.acked[g].contains(id) {
                    *lost_by.entry(format!("{name}/{}", a.kind)).or_default() += 1;
                }
            }
        }
        let lost_by: Vec<String> = lost_by.iter().map(|(k, n)| format!("{k}={n}")).collect();
        let mut duplicates = 0u64;
        for (g, deliveries) in self.deliveries.iter().enumerate() {
            for (id, &n) in deliveries {
                let legit = 1 + if g == 0 {
                    self.nacks.get(id).copied().unwrap_or(0)
                } else {
                    0
                };
                duplicates += u64::from(n.saturating_sub(legit));
            }
        }
        let count = |k: char| by_kind.get(&k).copied().unwrap_or(0);
        let rolled_back_halves = self
            .attempts
            .values()
            .filter(|a| a.ok && matches!(a.kind, 'r' | 'R'))
            .count();
        let (during, early, late) = self.kills.iter().fold((0, 0, 0), |(d, e, l), k| match k {
            KillClass::DuringOpen => (d + 1, e, l),
            KillClass::Early => (d, e + 1, l),
            KillClass::Late => (d, e, l + 1),
        });
        let mut s = String::new();
        let _ = write!(
            s,
            "crash_harness[{label}]: seed={seed} kills={} (during open {during}, early {early}, late {late}; {} before open) \
             messages={messages} (plain {}, delayed {}, nacked {}, orderly {}, tx committed {}, tx by check-back {}; {rolled_back_halves} halves rolled back) \
             deliveries={} lost={} early={} phantom={} rolled_back_delivered={} corrupt={} order={} corruption_reports={} errors={} \
             duplicates={duplicates} reopen p50={}ms p99={}ms max={}ms (open() p50={}ms p99={}ms) \
             committed={} checked={} end_failed={} garbled_lines={} lookups_checked={}",
            self.kills.len(),
            self.kills_before_open,
            count('p'),
            count('d'),
            count('n'),
            count('o'),
            count('c'),
            count('C'),
            self.delivered_total,
            lost.len(),
            self.early.len(),
            self.phantom.len(),
            self.rolled_back.len(),
            self.corrupt.len(),
            self.order.len(),
            self.corruption_reports.len(),
            self.errors.len(),
            percentile(&self.reopen_ms, 50),
            percentile(&self.reopen_ms, 99),
            self.reopen_ms.iter().max().copied().unwrap_or(0),
            percentile(&self.open_call_ms, 50),
            percentile(&self.open_call_ms, 99),
            self.committed,
            self.checked,
            self.end_failed,
            self.garbled,
            self.lookups_checked,
        );
        let mut bad = String::new();
        let sections: [(&str, &[String]); 9] = [
            ("harness failures", &self.failures),
            ("lost", &lost),
            ("early", &self.early),
            ("phantom (never sent)", &self.phantom),
            ("rolled-back halves delivered", &self.rolled_back),
            ("corrupt bodies", &self.corrupt),
            ("order violations", &self.order),
            ("corruption reports", &self.corruption_reports),
            ("child errors", &self.errors),
        ];
        for (name, list) in sections {
            if list.is_empty() {
                continue;
            }
            let _ = writeln!(bad, "{name}: {}", list.len());
            if name == "lost" {
                let _ = writeln!(bad, "    by group/kind: {}", lost_by.join(" "));
            }
            for line in list.iter().take(12) {
                let _ = writeln!(bad, "    {line}");
            }
        }
        if !self.drained {
            let _ = writeln!(bad, "the final child never reported DRAINED");
        }
        if bad.is_empty() {
            Ok(s)
        } else {
            Err(format!(
                "{s}\n{bad}replay with MQ_CRASH_SEED={seed} (MQ_CRASH_KEEP=1 keeps the data directory)"
            ))
        }
    }
}

/// Nearest-rank percentile; 0 for no samples.
pub fn percentile(samples: &[u64], p: usize) -> u64 {
    if samples.is_empty() {
        return 0;
    }
    let mut v = samples.to_vec();
    v.sort_unstable();
    let rank = (p * v.len()).div_ceil(100).max(1);
    v[rank - 1]
}
