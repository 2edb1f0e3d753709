//! Shared code of the fuzz targets. `record.rs` and `recovery.rs` are also compiled into
//! `mq-core/tests/fuzz_regressions.rs` (through `#[path]`), so a saved input replays through
//! exactly the checks that found it.

pub mod alloc_cap;
pub mod record;
pub mod recovery;
