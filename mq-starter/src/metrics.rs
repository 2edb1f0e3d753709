//! Counters and handler latency per (topic, group), rendered in Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The counters of one (topic, group).
#[derive(Debug, Default)]
pub struct Series {
    delivered: AtomicU64,
    acked: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    lag: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Series {
    /// A delivery reached the handler.
    pub fn delivered(&self) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }

    /// A delivery was acknowledged.
    pub fn acked(&self) {
        self.acked.fetch_add(1, Ordering::Relaxed);
    }

    /// Deliveries acknowledged in one call.
    pub fn acked_many(&self, n: u64) {
        self.acked.fetch_add(n, Ordering::Relaxed);
    }

    /// A delivery will be retried.
    pub fn retried(&self) {
        self.retried.fetch_add(1, Ordering::Relaxed);
    }

    /// A delivery went to the dead-letter queue.
    pub fn dead_lettered(&self) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }

    /// Records how long a handler ran.
    pub fn observe(&self, took: Duration) {
        // One bucket per observation (render sums them up): a handler call costs one atomic
        // add here, not one per bucket.
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|bound| secs <= *bound) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Deliveries acknowledged so far, duplicates acknowledged without running included.
    pub fn acked_count(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Deliveries sent back for a retry so far.
    pub fn retried_count(&self) -> u64 {
        self.retried.load(Ordering::Relaxed)
    }

    /// Sets the messages not yet consumed.
    pub fn set_lag(&self, lag: u64) {
        self.lag.store(lag, Ordering::Relaxed);
    }
}

/// The counters of the message trace (see [`crate::trace`]).
#[derive(Debug, Default)]
pub struct TraceCounters {
    recorded: AtomicU64,
    dropped_full: AtomicU64,
    dropped_failed: AtomicU64,
}

impl TraceCounters {
    /// Events stored in the broker.
    pub fn recorded(&self, n: u64) {
        self.recorded.fetch_add(n, Ordering::Relaxed);
    }

    /// Events dropped because the recorder's queue was full (or closed).
    pub fn dropped_full(&self, n: u64) {
        self.dropped_full.fetch_add(n, Ordering::Relaxed);
    }

    /// Events dropped because the broker did not store them.
    pub fn dropped_failed(&self, n: u64) {
        self.dropped_failed.fetch_add(n, Ordering::Relaxed);
    }

    /// Events stored so far.
    pub fn recorded_count(&self) -> u64 {
        self.recorded.load(Ordering::Relaxed)
    }

    /// Events dropped so far: (queue full, storing failed).
    pub fn dropped_counts(&self) -> (u64, u64) {
        (
            self.dropped_full.load(Ordering::Relaxed),
            self.dropped_failed.load(Ordering::Relaxed),
        )
    }
}

/// Every series of an application.
#[derive(Debug, Default)]
pub struct Metrics {
    series: RwLock<BTreeMap<(String, String), Arc<Series>>>,
    sent: RwLock<BTreeMap<String, Arc<AtomicU64>>>,
    trace: TraceCounters,
}

impl Metrics {
    /// The series of (topic, group), created on first use.
    pub fn series(&self, topic: &str, group: &str) -> Arc<Series> {
        let key = (topic.to_owned(), group.to_owned());
        if let Some(s) = self.series.read().get(&key) {
            return s.clone();
        }
        self.series.write().entry(key).or_default().clone()
    }

    /// The message trace's counters.
    pub fn trace(&self) -> &TraceCounters {
        &self.trace
    }

    /// Counts messages sent to `topic`.
    pub fn sent(&self, topic: &str, n: u64) {
        if let Some(c) = self.sent.read().get(topic) {
            c.fetch_add(n, Ordering::Relaxed);
            return;
        }
        self.sent
            .write()
            .entry(topic.to_owned())
            .or_default()
            .fetch_add(n, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let series = self.series.read();
        let counter = |out: &mut String, name: &str, help: &str, get: &dyn Fn(&Series) -> u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for ((topic, group), s) in series.iter() {
                let _ = writeln!(
                    out,
                    "{name}{{topic=\"{}\",group=\"{}\"}} {}",
                    escape(topic),
                    escape(group),
                    get(s)
                );
            }
        };
        let _ = writeln!(
            out,
            "# HELP mq_sent_total Messages sent.\n# TYPE mq_sent_total counter"
        );
        for (topic, c) in self.sent.read().iter() {
            let _ = writeln!(
                out,
                "mq_sent_total{{topic=\"{}\"}} {}",
                escape(topic),
                c.load(Ordering::Relaxed)
            );
        }
        counter(
            &mut out,
            "mq_delivered_total",
            "Deliveries handed to handlers.",
            &|s| s.delivered.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "mq_acked_total",
            "Deliveries acknowledged.",
            &|s| s.acked.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "mq_retried_total",
            "Deliveries that will be retried.",
            &|s| s.retried.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "mq_dead_lettered_total",
            "Messages sent to a dead-letter queue.",
            &|s| s.dead_lettered.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP mq_lag Messages stored but not yet consumed by the group.\n# TYPE mq_lag gauge"
        );
        for ((topic, group), s) in series.iter() {
            let _ = writeln!(
                out,
                "mq_lag{{topic=\"{}\",group=\"{}\"}} {}",
                escape(topic),
                escape(group),
                s.lag.load(Ordering::Relaxed)
            );
        }
        let (full, failed) = self.trace.dropped_counts();
        let _ = writeln!(
            out,
            "# HELP mq_trace_recorded_total Trace events stored in the broker.\n# TYPE mq_trace_recorded_total counter\nmq_trace_recorded_total {}",
            self.trace.recorded_count()
        );
        let _ = writeln!(
            out,
            "# HELP mq_trace_dropped_total Trace events never stored: the recorder's queue was full, or the broker refused them.\n# TYPE mq_trace_dropped_total counter\nmq_trace_dropped_total{{reason=\"queue_full\"}} {full}\nmq_trace_dropped_total{{reason=\"store_failed\"}} {failed}"
        );
        let name = "mq_handler_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Handler run time.\n# TYPE {name} histogram"
        );
        for ((topic, group), s) in series.iter() {
            let labels = format!("topic=\"{}\",group=\"{}\"", escape(topic), escape(group));
            let mut cumulative = 0;
            for (i, bound) in BUCKETS.iter().enumerate() {
                cumulative += s.buckets[i].load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
            }
            let count = s.count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
            let _ = writeln!(
                out,
                "{name}_sum{{{labels}}} {}",
                s.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
            );
            let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
        }
        out
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        let s = m.series("order", "points");
        s.delivered();
        s.acked();
        s.observe(Duration::from_millis(3));
        s.set_lag(7);
        m.sent("order", 2);
        m.trace().dropped_full(3);
        m.trace().recorded(5);
        let text = m.render();
        assert!(
            text.contains("mq_trace_dropped_total{reason=\"queue_full\"} 3"),
            "{text}"
        );
        assert!(text.contains("mq_trace_dropped_total{reason=\"store_failed\"} 0"));
        assert!(text.contains("mq_trace_recorded_total 5"));
        assert!(text.contains("mq_sent_total{topic=\"order\"} 2"), "{text}");
        assert!(text.contains("mq_acked_total{topic=\"order\",group=\"points\"} 1"));
        assert!(text.contains("mq_lag{topic=\"order\",group=\"points\"} 7"));
        assert!(text.contains(
            "mq_handler_seconds_bucket{topic=\"order\",group=\"points\",le=\"0.001\"} 0"
        ));
        assert!(text.contains(
            "mq_handler_seconds_bucket{topic=\"order\",group=\"points\",le=\"0.005\"} 1"
        ));
        assert!(text.contains("mq_handler_seconds_count{topic=\"order\",group=\"points\"} 1"));
    }
}
