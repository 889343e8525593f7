//! How the worker sets up glibc's allocator before anything else runs. A build moves column
//! buffers of megabytes through memory by the thousand; glibc's defaults keep them in the heap
//! for ever, spread them over a dozen arenas, and map each with 4 KiB pages. Nothing here changes
//! what the program computes, only where its memory comes from and how fast it is mapped.

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

/// The glibc tunable that makes malloc ask for transparent huge pages (`madvise`) on the blocks
/// it maps (glibc 2.35 and later; older ones ignore it).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const HUGE_PAGES_TUNABLE: &str = "glibc.malloc.hugetlb=1";

/// Starts the process again, once, with [`HUGE_PAGES_TUNABLE`] added to `GLIBC_TUNABLES`.
///
/// Each large buffer is a mapping of its own (see [`keep_large_allocations_returnable`]) that the
/// kernel fills a 4 KiB page at a time on first touch: a 25M-row build took 6 million page faults
/// (24 GB mapped and zeroed over the run). Where transparent huge pages are enabled on request
/// (`/sys/kernel/mm/transparent_hugepage/enabled` = `madvise`, the default of many
/// distributions), glibc asks for them only when told at start-up, through the environment:
/// `mallopt` has no such knob. With 2 MiB pages the same build took about 2 million faults and
/// 15% less time, at the same peak RSS. The restart keeps the process id, arguments, environment
/// and inherited descriptors (the run lock a supervisor hands over); it must happen before any
/// thread or file exists. It costs about 4 ms (loading the binary again), so only the commands
/// that build tables make it, and if it fails the worker carries on with small pages. Set the
/// tunable yourself (even to `glibc.malloc.hugetlb=0`) to skip it.
pub fn restart_with_huge_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;

        let current = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
        if current.contains("glibc.malloc.hugetlb") {
            return;
        }
        let tunables = if current.is_empty() {
            HUGE_PAGES_TUNABLE.to_string()
        } else {
            format!("{current}:{HUGE_PAGES_TUNABLE}")
        };
        let mut args = std::env::args_os();
        let Some(program) = args.next() else {
            return;
        };
        // Only returns if the exec failed, in which case nothing has changed.
        let _ = std::process::Command::new("/proc/self/exe")
            .arg0(program)
            .args(args)
            .env("GLIBC_TUNABLES", tunables)
            .exec();
    }
}
