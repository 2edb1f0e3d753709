use mq_starter::prelude::*;

#[mq_listener(topic = "t", group = "g")]
async fn handler(msg: MessageView, count: u32) {
    let _ = (msg, count);
}

fn main() {}
