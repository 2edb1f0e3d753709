//! `cargo fuzz run record_decode`: see `src/record.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mq_fuzz::alloc_cap::CappedAlloc;

#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc::new();

/// Inputs are at most `-max_len` (64 KiB in the README command): no single allocation of the
/// decoder may exceed a few times that.
const CAP: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    ALLOC.set_cap(CAP);
    mq_fuzz::record::run(data);
});
