//! A counting global allocator: how many allocations a measured phase made, on every thread.
//!
//! Only the allocating calls (`alloc`, `alloc_zeroed`, `realloc`) touch the counters; frees do
//! not, so a thread that only frees never writes the shared cache line. Declare it in a
//! binary with `#[global_allocator] static ALLOC: Counting = Counting;`.
#![allow(dead_code)] // shared by several bench and example targets; each uses a part

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

/// The system allocator, counting allocations.
pub struct Counting;

// SAFETY: every call is forwarded unchanged to `System`; the counters are plain atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (every path above forwards).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: as for `dealloc`; `new_size` comes from the caller's contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[inline]
fn count(bytes: usize) {
    // Relaxed: a statistic read after the threads that wrote it were synchronised with
    // (a channel receive or a join), which orders the increments before the read.
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
}

/// Allocation counts at one moment; subtract two to get the counts of a phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Allocs {
    pub count: u64,
    pub bytes: u64,
}

impl Allocs {
    /// The counts so far (all threads).
    pub fn now() -> Allocs {
        Allocs {
            count: ALLOCATIONS.load(Ordering::Relaxed),
            bytes: BYTES.load(Ordering::Relaxed),
        }
    }

    /// The counts since `earlier`.
    pub fn since(earlier: Allocs) -> Allocs {
        let now = Allocs::now();
        Allocs {
            count: now.count - earlier.count,
            bytes: now.bytes - earlier.bytes,
        }
    }
}
