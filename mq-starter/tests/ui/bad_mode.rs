use mq_starter::prelude::*;

#[mq_listener(topic = "t", group = "g", mode = sometimes)]
async fn handler(msg: MessageView) {
    let _ = msg;
}

fn main() {}
