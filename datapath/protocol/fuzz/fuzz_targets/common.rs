//! Shared by the fuzz targets: a global allocator that refuses single allocations above
//! [`MAX_ALLOC`], so an input-controlled length that reaches `vec![0; len]` or
//! `Vec::with_capacity(len)` shows up as a crash ("memory allocation of N bytes failed",
//! then abort) instead of passing silently. Without a sanitizer (`-s none`) libFuzzer's own
//! `-malloc_limit_mb` has no malloc hooks to work with, and lazily-zeroed `calloc` pages
//! never trip `-rss_limit_mb`, so this is the only guard against unbounded allocations.

use std::alloc::{GlobalAlloc, Layout, System};

/// Largest single allocation the code under test may make. The biggest legitimate one in
/// these targets is a 1 MiB log page window.
pub const MAX_ALLOC: usize = 64 << 20;

pub struct CappedAlloc;

// SAFETY: forwards to the system allocator; refusing (returning null) is always allowed.
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOC {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOC {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > MAX_ALLOC {
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// `b` if it is at least `n` bytes long, else `b` zero-extended to `n` bytes, so that the
/// fuzzer reaches decoders of fixed-size structures (1-4 KiB) from short inputs.
#[allow(dead_code)] // used by command_decode only
pub fn padded(b: &[u8], n: usize) -> std::borrow::Cow<'_, [u8]> {
    if b.len() >= n {
        std::borrow::Cow::Borrowed(b)
    } else {
        let mut v = b.to_vec();
        v.resize(n, 0);
        std::borrow::Cow::Owned(v)
    }
}
