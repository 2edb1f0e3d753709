use mq_starter::prelude::*;

#[derive(Clone)]
struct Tx;

// The attribute is wrong, but the impl is still there: code needing it compiles.
#[transaction_listener(name = "pay", enabled = "sometimes")]
impl TransactionListener for Tx {
    type Arg = ();

    async fn execute(&self, _msg: &MessageView, _arg: ()) -> TxState {
        TxState::Commit
    }

    async fn check(&self, _msg: &MessageView) -> TxState {
        TxState::Commit
    }
}

fn needs_listener<T: TransactionListener>(_: T) {}

fn main() {
    needs_listener(Tx);
}
