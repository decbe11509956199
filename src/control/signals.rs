//! Process signals, taken synchronously on the control thread: they are
//! blocked in every thread (workers inherit the mask from the control thread
//! that spawns them) and collected with `sigtimedwait`, so no handler runs
//! inside a worker and no async-signal-safety puzzles arise.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT: drain and exit.
    Terminate,
    /// SIGHUP: reload the config.
    Reload,
    /// SIGUSR1: reopen log files.
    Reopen,
}

fn handled_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a plain C struct.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1] {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Blocks the handled signals in the calling thread and every thread it
/// spawns afterwards. Call before spawning workers.
pub fn block() -> std::io::Result<()> {
    let set = handled_set();
    // SAFETY: valid set pointer; old mask not requested.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Waits up to `timeout` for one of the handled signals.
pub fn wait(timeout: Duration) -> Option<Signal> {
    let set = handled_set();
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: valid pointers to a filled set and a timespec; info not needed.
    let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
    match sig {
        libc::SIGTERM | libc::SIGINT => Some(Signal::Terminate),
        libc::SIGHUP => Some(Signal::Reload),
        libc::SIGUSR1 => Some(Signal::Reopen),
        _ => None,
    }
}
