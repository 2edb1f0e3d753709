//! Every key of `#[mq_listener]` with typed literals (and placeholders) compiles, and the
//! registration carries typed values.

use std::time::Duration;

use mq_starter::__private::AttributeValue;
use mq_starter::core::{ConsumeMode, MessageModel};
use mq_starter::prelude::*;

#[mq_listener(
    topic = ["t-a", "t-b"],
    group = "g",
    tag = "a || b",
    model = broadcasting,
    mode = concurrently,
    concurrency = 4,
    max_reconsume_times = 16,
    consume_timeout = "1m 30s",
    batch = 10,
    enabled = false,
)]
async fn batched(msgs: Vec<MessageView>) {
    let _ = msgs;
}

#[mq_listener(
    topic = "t",
    group = "g-orderly",
    model = "clustering",
    mode = orderly,
    max_reconsume_times = 0,
    consume_timeout = "250ms",
    idempotent = key,
    enabled = true,
)]
async fn idempotent(msg: MessageView) {
    let _ = msg;
}

#[mq_listener(
    topic = "${app.topic}",
    group = "${app.group:g-ph}",
    model = "${app.model:clustering}",
    mode = "${app.mode:orderly}",
    concurrency = "${app.concurrency:2}",
    max_reconsume_times = "${app.retries:3}",
    consume_timeout = "${app.timeout:5s}",
    enabled = "${app.enabled:false}",
)]
async fn placeholders(msg: MessageView) {
    let _ = msg;
}

#[derive(Clone)]
struct Tx;

#[transaction_listener(name = "pay", enabled = "${app.pay:true}")]
impl TransactionListener for Tx {
    type Arg = ();

    async fn execute(&self, _msg: &MessageView, _arg: ()) -> TxState {
        TxState::Commit
    }

    async fn check(&self, _msg: &MessageView) -> TxState {
        TxState::Commit
    }
}

fn main() {
    let find = |name| {
        mq_starter::registry::listeners()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("{name} is not registered"))
    };
    let b = find("batched");
    assert_eq!(b.topics, ["t-a", "t-b"]);
    assert_eq!(b.model, Some(AttributeValue::Literal(MessageModel::Broadcasting)));
    assert_eq!(b.mode, Some(AttributeValue::Literal(ConsumeMode::Concurrently)));
    assert_eq!(b.concurrency, Some(AttributeValue::Literal(4)));
    assert_eq!(b.max_reconsume_times, Some(AttributeValue::Literal(16)));
    assert_eq!(
        b.consume_timeout,
        Some(AttributeValue::Literal(Duration::from_secs(90)))
    );
    assert_eq!(b.batch, Some(AttributeValue::Literal(10)));
    assert_eq!(b.enabled, AttributeValue::Literal(false));

    let i = find("idempotent");
    assert_eq!(i.model, Some(AttributeValue::Literal(MessageModel::Clustering)));
    assert_eq!(i.mode, Some(AttributeValue::Literal(ConsumeMode::Orderly)));
    assert_eq!(i.max_reconsume_times, Some(AttributeValue::Literal(0)));
    assert_eq!(
        i.consume_timeout,
        Some(AttributeValue::Literal(Duration::from_millis(250)))
    );
    assert!(i.idempotent.is_some());
    assert_eq!(i.concurrency, None);

    let p = find("placeholders");
    assert_eq!(p.group, "${app.group:g-ph}");
    assert_eq!(p.mode, Some(AttributeValue::Placeholder("${app.mode:orderly}")));
    assert_eq!(p.concurrency, Some(AttributeValue::Placeholder("${app.concurrency:2}")));
    assert_eq!(p.enabled, AttributeValue::Placeholder("${app.enabled:false}"));

    let tx = mq_starter::registry::transaction_listeners()
        .find(|t| t.name == "pay")
        .unwrap_or_else(|| panic!("pay is not registered"));
    assert_eq!(tx.enabled, AttributeValue::Placeholder("${app.pay:true}"));
}
