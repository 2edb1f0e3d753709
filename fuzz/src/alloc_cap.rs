//! A global allocator that refuses any single allocation above a cap, so that a read sized by
//! a corrupt length field aborts at once ("memory allocation of N bytes failed") instead of
//! zeroing gigabytes. Works without a sanitizer (libFuzzer's `-malloc_limit_mb` needs one).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The allocator; set the cap with [`CappedAlloc::set_cap`].
pub struct CappedAlloc {
    cap: AtomicUsize,
}

impl CappedAlloc {
    /// No cap until `set_cap`.
    pub const fn new() -> Self {
        CappedAlloc {
            cap: AtomicUsize::new(usize::MAX),
        }
    }

    /// Refuse single allocations above `bytes`.
    pub fn set_cap(&self, bytes: usize) {
        self.cap.store(bytes, Ordering::Relaxed);
    }

    fn admit(&self, size: usize) -> bool {
        size <= self.cap.load(Ordering::Relaxed)
    }
}

impl Default for CappedAlloc {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: every call is forwarded to `System` unchanged or refused with a null pointer, which
// the `GlobalAlloc` contract allows.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !self.admit(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !self.admit(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded as is.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !self.admit(new_size) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
