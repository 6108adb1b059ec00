//! The allocator's settings, made once before the runtime starts, and giving freed heap back
//! to the system. Called by the stages that make and drop large values (the queue after a
//! burst, a field actor once its last read value goes stale); knows nothing of them.

/// Keeps the heap in two glibc arenas: by default each thread that allocates may get its own,
/// and a field's value, read and written by whichever worker runs its actor, then grows to its
/// peak in each of them. Large blocks (a field's answer, a PUT's body: megabytes in a field of
/// thousands of files) are always mapped on their own and returned when freed; glibc would
/// otherwise raise that threshold after the first such free and carve the next ones from the
/// heap, where they stay as free holes between small blocks.
pub fn share_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator settings; it takes no pointers.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 512 * 1024);
    }
}

/// Returns the heap a burst of files used to the system: glibc keeps freed memory in each
/// arena otherwise, and a daemon that synced 20,000 files would hold the peak for good.
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap memory; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}
