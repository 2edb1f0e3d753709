use mq_starter::prelude::*;

#[transaction_listener(name = "pay")]
async fn pay(_msg: MessageView) -> TxState {
    TxState::Commit
}

fn main() {}
