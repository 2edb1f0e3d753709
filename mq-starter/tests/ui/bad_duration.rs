use mq_starter::prelude::*;

#[mq_listener(topic = "t", group = "g", consume_timeout = "30 parsecs")]
async fn handler(msg: MessageView) {
    let _ = msg;
}

#[mq_listener(topic = "t", group = "g2", consume_timeout = 30)]
async fn unquoted(msg: MessageView) {
    let _ = msg;
}

#[mq_listener(topic = "t", group = "g3", consume_timeout = "0s")]
async fn zero(msg: MessageView) {
    let _ = msg;
}

fn main() {}
