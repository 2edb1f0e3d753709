//! Attribute macros of mq.
//!
//! This crate will hold `#[mq_listener]` and `#[transaction_listener]` (tracked by the starter
//! issue). It exports nothing yet: applications should depend on `mq-starter`, which will
//! re-export the attributes once they exist.
