use mq_starter::prelude::*;

#[derive(Clone)]
struct Tx;

#[transaction_listener]
impl TransactionListener for Tx {
    type Arg = ();

    async fn execute(&self, _msg: &MessageView, _arg: ()) -> TxState {
        TxState::Commit
    }

    async fn check(&self, _msg: &MessageView) -> TxState {
        TxState::Commit
    }
}

fn main() {}
