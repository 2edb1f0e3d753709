use mq_starter::prelude::*;

// The attribute is wrong, but the function is still there: its callers compile, and the only
// error is the attribute's.
#[mq_listener(topic = "t", group = "g", concurrency = "lots")]
async fn handler(msg: MessageView) -> Result<(), String> {
    let _ = msg;
    Ok(())
}

async fn caller(msg: MessageView) -> Result<(), String> {
    handler(msg).await
}

fn main() {
    let _ = caller;
    let _: fn(MessageView) -> _ = handler;
}
