//! Sizes the process's file-descriptor table before the load comes (`canon serve` at start-up).
//!
//! Linux grows a process's file table by doubling it, and a process with more than one thread
//! waits for an RCU grace period on every doubling (`expand_fdtable`): about 10 ms here, spent
//! inside whichever `open`, `accept` or `socket` needed the new slot. Under a burst of new
//! connections (an open-loop client after a stall opened 1,500 descriptors in a second) that
//! happens three or four times, at the worst moment: a tokio worker stops for it, or fjall's
//! worker does while it holds a keyspace's version lock, which stops every commit
//! (BENCHMARKS.md, "What a commit waits for"). The table never shrinks, so taking a high slot
//! once at start-up and giving it back leaves room for [`SLOTS`] descriptors at the cost of one
//! wait, before anything waits on it. Linux only; elsewhere it does nothing.

/// Descriptors the table is sized for at start-up (at most the soft `RLIMIT_NOFILE`): 64 KiB
/// of table.
pub(crate) const SLOTS: u64 = 8192;

/// Grows the file table to hold `slots` descriptors (fewer if the soft `RLIMIT_NOFILE` is
/// lower) and returns its new size in slots, or `None` where it cannot (not Linux, or the
/// system refused; the table then grows on demand, as it would anyway).
#[allow(unsafe_code)]
pub(crate) fn reserve(slots: u64) -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let top = slots.min(soft_limit()?).checked_sub(1)?;
        let top = libc::c_int::try_from(top).ok()?;
        let null = std::fs::File::open("/dev/null").ok()?;
        // The lowest free descriptor at or above `top`: the table grows to hold it. Closed at
        // once; the table keeps its size.
        // SAFETY: F_DUPFD_CLOEXEC takes a descriptor and an int and returns a new descriptor,
        // which is owned here and closed when dropped.
        let fd = unsafe { libc::fcntl(null.as_raw_fd(), libc::F_DUPFD_CLOEXEC, top) };
        if fd < 0 {
            return None;
        }
        // SAFETY: `fd` is a descriptor this function just opened and nothing else owns.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
        table_size()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = slots;
        None
    }
}

/// The soft `RLIMIT_NOFILE`: one more than the highest descriptor the process may open.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn soft_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given, which lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    // `rlim_t` is 32 bits on some Linux targets.
    #[allow(clippy::useless_conversion)]
    Some(u64::from(limit.rlim_cur))
}

/// The size of the process's file table in slots (`FDSize` in `/proc/self/status`).
pub(crate) fn table_size() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("FDSize:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn the_table_is_grown_and_stays_grown() {
        let wanted = 4096.min(super::soft_limit().expect("RLIMIT_NOFILE"));
        let size = super::reserve(4096).expect("reserved");
        assert!(size >= wanted, "FDSize {size}");
        // Closing the high descriptor did not shrink the table, and the slot it took is free.
        assert_eq!(super::table_size(), Some(size));
        let open: Vec<u64> = std::fs::read_dir("/proc/self/fd")
            .expect("fd dir")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        assert!(
            !open.contains(&(wanted - 1)),
            "descriptor {} left open",
            wanted - 1
        );
    }
}
