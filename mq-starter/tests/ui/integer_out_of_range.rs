use mq_starter::prelude::*;

// Both errors are reported, each at its own token.
#[mq_listener(topic = "t", group = "g", concurrency = 0, max_reconsume_times = 5000000000)]
async fn handler(msg: MessageView) {
    let _ = msg;
}

#[mq_listener(topic = "t", group = "g2", batch = -1)]
async fn batch_handler(msgs: Vec<MessageView>) {
    let _ = msgs;
}

fn main() {}
