//! Patched (Magpie): the CPU scheduling priority of background threads.
//!
//! Flushes, compactions, retiring old versions and preparing journals are background work:
//! nobody waits for one particular piece of it, while every write waits for the thread that
//! commits it. On a machine whose cores are all busy, the scheduler gives a thread with nice
//! value `n` a share of about `1.25^-n` of a default thread's, so background threads with a
//! positive nice value yield to foreground threads under contention and still get every idle
//! cycle. The setting is process-wide and off (0) until set.

use std::sync::atomic::{AtomicI32, Ordering};

/// Highest nice value Linux accepts.
const NICE_MAX: i32 = 19;

/// Nice value background threads give themselves when they start; 0 leaves them alone.
static BACKGROUND_NICE: AtomicI32 = AtomicI32::new(0);

/// Sets the nice value (0..=19, clamped) that background threads started from now on give
/// themselves (an absolute value, applied only where it lowers the thread). Threads already
/// running keep theirs.
pub fn set_background_nice(nice: i32) {
    BACKGROUND_NICE.store(nice.clamp(0, NICE_MAX), Ordering::Relaxed);
}

/// The nice value background threads give themselves.
#[must_use]
pub fn background_nice() -> i32 {
    BACKGROUND_NICE.load(Ordering::Relaxed)
}

/// Called by a background thread when it starts: lowers its own priority to the configured
/// nice value, unless it already runs at that value or lower (it never raises a thread, so a
/// process started with `nice -n 15` keeps 15 everywhere). Lowering one's priority needs no
/// privilege; a failure only leaves the thread at the priority it had, so it is logged and
/// otherwise ignored.
pub fn lower_current_thread() {
    let nice = background_nice();
    if nice == 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        // On Linux the nice value belongs to a thread, not to the process, and
        // `PRIO_PROCESS` with a thread id reads or sets that thread's alone.
        // SAFETY: `gettid`, `getpriority` and `setpriority` only read their integer
        // arguments; errno is this thread's own.
        let result = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            // `getpriority` may return -1 as a value, so errno tells an error apart.
            *libc::__errno_location() = 0;
            let current = libc::getpriority(libc::PRIO_PROCESS, tid);
            if *libc::__errno_location() != 0 || current >= nice {
                0
            } else {
                libc::setpriority(libc::PRIO_PROCESS, tid, nice)
            }
        };
        if result != 0 {
            log::debug!(
                "could not lower a background thread's priority: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}
