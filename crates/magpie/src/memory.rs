//! How the process gets memory from the kernel: no transparent huge pages, and freed memory
//! kept for a while before it is returned.
//!
//! Both settings remove page-fault stalls from the store's commit thread. Every commit builds
//! a write batch and the memtables grow by skiplist nodes; the allocator serves them from
//! memory it has just mapped, or re-mapped after returning it to the kernel. With huge pages,
//! the first touch of such memory faults in and zeroes 2 MiB at once. A profile of the commit
//! thread at 67,000 msg/s paced found 10.7% of its time in that zeroing under write-batch
//! growth alone (`WriteBatch::insert` → `realloc` → `do_huge_pmd_anonymous_page` →
//! `clear_page_erms`), and timing prints found single memtable inserts of about 4.6 ms, each
//! delaying a whole commit group. Both settings together took send→deliver p99
//! from 18.7 and 28.9 ms to 9.6 and 8.5 ms in alternating runs (docs/benchmarks.md).

/// mimalloc's option number for the purge delay (`mi_option_purge_delay`: the same in its
/// v2 and v3 headers; the Rust bindings only name it for v2).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long mimalloc keeps freed memory before returning it to the kernel, in milliseconds
/// (mimalloc's default is 1,000). Memtables are freed and rebuilt every second or so under
/// load; keeping their memory for 10 s means it is reused instead of faulted in again, while
/// memory left over from a burst still goes back to the kernel once the burst is over.
const FREED_MEMORY_KEEP_MS: std::os::raw::c_long = 10_000;

/// Applies both settings. Call it first thing in `main`, before threads start.
///
/// `MIMALLOC_PURGE_DELAY` (or its older name `MIMALLOC_RESET_DELAY`) in the environment
/// still wins, for experiments.
pub fn configure() {
    disable_transparent_huge_pages();
    let from_env = ["MIMALLOC_PURGE_DELAY", "MIMALLOC_RESET_DELAY"]
        .iter()
        .any(|name| std::env::var_os(name).is_some());
    if !from_env {
        // SAFETY: `mi_option_set` only stores an integer in mimalloc's option table.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, FREED_MEMORY_KEEP_MS) };
    }
}

/// Turns transparent huge pages off for this process only (the machine's setting stays as it
/// is). mimalloc's `no_thp` feature already stops it asking for them; this also covers a
/// kernel set to use them everywhere.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `PR_SET_THP_DISABLE` takes integer arguments and changes a flag of this
        // process only.
        let result = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if result != 0 {
            // Only a latency optimisation: the process runs correctly either way.
            eprintln!(
                "magpie: could not turn off transparent huge pages: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}
