use mq_starter::prelude::*;

#[mq_listener(group = "g")]
async fn handler(msg: MessageView) {
    let _ = msg;
}

fn main() {}
