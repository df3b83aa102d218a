//! Keeps freed memory in the process for the next forward step. A step allocates and frees
//! tensors of tens of MiB (a 2B layer's MLP activations for a check are ~20 MiB); glibc maps
//! such blocks fresh and hands them back when freed, so every step paid a page fault per 4 KiB
//! (2.9 M faults for three long Q4_K_M checks, 0.67 M with this). The peak stays the peak; the
//! process just does not shrink below it between steps.
#![allow(unsafe_code)]

/// Raises glibc's mmap and trim thresholds once (no-op on other C libraries).
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only changes allocator thresholds; called before the model's
            // allocations, from one thread (Once).
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
            }
        });
    }
}
