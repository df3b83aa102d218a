//! The process's allocator: blocks under 1 MiB from mimalloc, larger ones from the C library.
//!
//! The gateway allocates and frees a few hundred small blocks per request (headers, JSON,
//! decisions, futures), often on one thread and freed on another; glibc's malloc spent about a
//! tenth of a connection worker's time on them, mimalloc's thread-local free lists far less.
//! The model's tensors (MiBs each) stay with the C library, whose thresholds the model's loader
//! tunes (`src/model/load/malloc.rs`) so that a forward step reuses the memory the previous one
//! freed. A block's side is decided by its size, which Rust passes to
//! every call (the same on free as on allocation), so each side frees only its own blocks.
//!
//! Binaries opt in: `#[global_allocator] static ALLOC: shieldgate::allocator::Split = Split;`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};

use mimalloc::MiMalloc;

/// Blocks of this size and more come from the C library.
pub const LARGE: usize = 1 << 20;

/// Small blocks from mimalloc, large ones from the C library; see the module docs.
pub struct Split;

fn is_large(size: usize) -> bool {
    size >= LARGE
}

// SAFETY: every call is forwarded to the allocator that owns the block: the side is a pure
// function of the size, and Rust frees (or resizes) a block with the size it last gave it.
// Moving a block across sides in `realloc` allocates on the new side, copies the bytes both
// sizes hold, and frees the old block on its own side.
unsafe impl GlobalAlloc for Split {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_large(layout.size()) {
            System.alloc(layout)
        } else {
            MiMalloc.alloc(layout)
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_large(layout.size()) {
            System.alloc_zeroed(layout)
        } else {
            MiMalloc.alloc_zeroed(layout)
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_large(layout.size()) {
            System.dealloc(ptr, layout)
        } else {
            MiMalloc.dealloc(ptr, layout)
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        match (is_large(layout.size()), is_large(new_size)) {
            (true, true) => System.realloc(ptr, layout, new_size),
            (false, false) => MiMalloc.realloc(ptr, layout, new_size),
            _ => {
                // SAFETY: the caller guarantees `new_size`, rounded up to `layout.align()`,
                // does not overflow `isize`, which is what a layout needs.
                let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
                let moved = self.alloc(new_layout);
                if !moved.is_null() {
                    std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
                moved
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(from: usize, to: usize) {
        let layout = Layout::from_size_align(from, 16).expect("layout");
        // SAFETY: the block is allocated, written, resized and freed with the layouts the
        // calls were given, and read only within the sizes both ends hold.
        unsafe {
            let ptr = Split.alloc(layout);
            assert!(!ptr.is_null());
            for i in 0..from {
                *ptr.add(i) = (i % 251) as u8;
            }
            let grown = Split.realloc(ptr, layout, to);
            assert!(!grown.is_null());
            assert_eq!(grown as usize % 16, 0, "alignment kept");
            for i in 0..from.min(to) {
                assert_eq!(*grown.add(i), (i % 251) as u8, "byte {i} of {from} → {to}");
            }
            Split.dealloc(grown, Layout::from_size_align(to, 16).expect("layout"));
        }
    }

    #[test]
    fn blocks_keep_their_bytes_when_resized_within_and_across_the_sides() {
        roundtrip(100, 4000);
        roundtrip(LARGE - 1, LARGE);
        roundtrip(LARGE, LARGE - 1);
        roundtrip(3 * LARGE, 5 * LARGE);
        roundtrip(5 * LARGE, 64);
    }

    #[test]
    fn zeroed_blocks_are_zero_on_both_sides() {
        for size in [64, LARGE + 64] {
            let layout = Layout::from_size_align(size, 8).expect("layout");
            // SAFETY: allocated and freed with the same layout; read within its size.
            unsafe {
                let ptr = Split.alloc_zeroed(layout);
                assert!(!ptr.is_null());
                assert!((0..size).all(|i| *ptr.add(i) == 0));
                Split.dealloc(ptr, layout);
            }
        }
    }
}
