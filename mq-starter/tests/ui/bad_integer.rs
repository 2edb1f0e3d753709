use mq_starter::prelude::*;

#[mq_listener(topic = "t", group = "g", concurrency = "lots")]
async fn handler(msg: MessageView) {
    let _ = msg;
}

fn main() {}
