use mq_starter::prelude::*;

#[mq_listener(topic = "t")]
async fn handler(msg: MessageView) {
    let _ = msg;
}

fn main() {}
