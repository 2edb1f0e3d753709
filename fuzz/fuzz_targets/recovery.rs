//! `cargo fuzz run recovery`: see `src/recovery.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mq_fuzz::alloc_cap::CappedAlloc;

#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc::new();

/// No single allocation of the broker may exceed this: records are at most 2 KiB and
/// segments 66 KiB in the fuzzed directory.
const CAP: usize = 16 << 20;

fuzz_target!(|data: &[u8]| {
    ALLOC.set_cap(CAP);
    mq_fuzz::recovery::run(data);
});
