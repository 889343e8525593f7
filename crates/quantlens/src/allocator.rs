//! How the worker sets up glibc's allocator before anything else runs. A build moves column
//! buffers of megabytes through memory by the thousand; glibc's defaults keep them in the heap
//! for ever and spread them over a dozen arenas. Nothing here changes what the program computes,
//! only where its memory comes from.
//!
//! One more setting can only come from the environment at start-up: `GLIBC_TUNABLES=
//! glibc.malloc.hugetlb=1` makes malloc ask for transparent huge pages on the blocks it maps,
//! where the kernel gives them on request (`madvise`, the default of many distributions). The
//! deployment's env file sets it for every unit, the operator's wrapper and, through the trigger,
//! its workers: a 25M-row build then takes a third of the page faults and about 13% less time
//! (docs/benchmarks.md). Restarting the process to set it would cost about 10 ms of start-up on
//! every run, so the worker does not set it itself.

/// glibc raises its mmap threshold as large blocks are freed, after which big column buffers come
/// from the heap arenas and stay there: a run's peak RSS becomes the sum of its assets' peaks. A
/// fixed threshold keeps large buffers in their own mappings, returned to the OS when freed.
/// glibc also gives threads their own arenas, up to eight per core, and memory freed in one is
/// not reused by another: the tokio workers, the blocking pool and Polars' pool spread a build's
/// buffers over a dozen arenas, and a 25M-row build peaked at 635-717 MiB although no asset alone
/// needs more than 400. Two arenas: 322 MiB, in the same time.
pub fn keep_large_allocations_returnable() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_ARENA_MAX, ALLOCATOR_ARENAS);
    }
}

/// Heap arenas glibc may create (see [`keep_large_allocations_returnable`]).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ALLOCATOR_ARENAS: libc::c_int = 2;
