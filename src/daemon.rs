//! `sluice -d`: run in the background, for service managers that expect a forking daemon with a
//! PID file (systemd `Type=forking`, which is what makes `sluice -u -d` upgrades work under it:
//! see `conf/sluice.service`).
//!
//! Sluice forks before it builds anything, not inside Pingora's own daemon mode: Pingora forks
//! in `run`, after the usage ledger and limiter threads exist, and a fork keeps only the thread
//! that called it.

use std::io;
use std::path::Path;

/// Forks. The parent writes the child's PID to `pid_file` and exits, so the PID file is in place
/// when a service manager sees the parent exit; the child returns and runs the server in a new
/// session.
pub fn daemonize(pid_file: &Path) -> io::Result<()> {
    // SAFETY: called from `main` before any other thread exists, so the child is a complete
    // copy of the process.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            // SAFETY: setsid has no memory-safety preconditions.
            if unsafe { libc::setsid() } == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }
        child => {
            let written = write_pid_file(pid_file, child as u32);
            if let Err(e) = &written {
                eprintln!("cannot write the pid file {}: {e}", pid_file.display());
            }
            std::process::exit(if written.is_ok() { 0 } else { 1 });
        }
    }
}

/// Where the PID file is written before it is renamed into place.
pub fn pid_temp_path(path: &Path) -> std::path::PathBuf {
    path.with_extension("pid.tmp")
}

/// Written whole under a temporary name and renamed, so a reader never sees a partial PID.
pub fn write_pid_file(path: &Path, pid: u32) -> io::Result<()> {
    let temporary = pid_temp_path(path);
    std::fs::write(&temporary, format!("{pid}\n"))?;
    std::fs::rename(&temporary, path)
}
