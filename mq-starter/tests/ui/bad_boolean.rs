use mq_starter::prelude::*;

#[mq_listener(topic = "t", group = "g", enabled = "yes")]
async fn handler(msg: MessageView) {
    let _ = msg;
}

fn main() {}
