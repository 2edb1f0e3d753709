//! A handler runs inside its delivery's span: its own log lines carry the listener, topic,
//! group, message id and attempt without the handler naming them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mq_starter::prelude::*;
use mq_starter::Body;
use support::{eventually, start};

/// Everything the subscriber wrote.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[mq_listener(topic = "t-span", group = "g-span", enabled = "${test.span:false}")]
async fn logs_a_line(Body(body): Body) {
    tracing::info!(body = %String::from_utf8_lossy(&body), "handler says hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handlers_own_events_carry_its_delivery() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .init();
    let app = start(&["span"], "", |a| a).await;
    let sent = app
        .running
        .template()
        .message("t-span")
        .bytes("span-test")
        .send()
        .await
        .unwrap();
    eventually("the handler's line", Duration::from_secs(20), || {
        captured.text().contains("handler says hello")
    })
    .await;
    let text = captured.text();
    let line = text
        .lines()
        .find(|l| l.contains("handler says hello"))
        .unwrap();
    for field in [
        "mq.delivery{".to_owned(),
        format!("message_id={}", sent.message_id),
        "topic=t-span".to_owned(),
        "group=g-span".to_owned(),
        "attempt=1".to_owned(),
    ] {
        assert!(line.contains(&field), "{field:?} missing from {line:?}");
    }
    app.running.shutdown().await.unwrap();
}
