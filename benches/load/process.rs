//! Child processes that can never outlive the harness by accident.
//!
//! Each proxy starts as the leader of its own process group, so nginx's workers are found and
//! stopped with their master. A `Drop` guard stops the group (also when the harness panics), and
//! a registry lets the Ctrl-C handler and the watchdog stop every group that is still running.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static GROUPS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// A running child process group, stopped when dropped.
pub struct Group {
    child: Child,
    pub pgid: u32,
}

impl Group {
    /// Starts `program` in `dir`, stdout and stderr to `log_stem.out` / `.err` in `dir`.
    pub fn spawn(
        program: &Path,
        args: &[&str],
        dir: &Path,
        log_stem: &str,
        env: &[(&str, &str)],
    ) -> Result<Group, String> {
        use std::os::unix::process::CommandExt;
        let out = std::fs::File::create(dir.join(format!("{log_stem}.out")))
            .map_err(|e| format!("log file: {e}"))?;
        let err = std::fs::File::create(dir.join(format!("{log_stem}.err")))
            .map_err(|e| format!("log file: {e}"))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        for (key, value) in env {
            command.env(key, value);
        }
        if let Some(cpus) = crate::placement::proxy_cpus() {
            // SAFETY: between fork and exec the hook makes one system call and allocates nothing.
            unsafe {
                command.pre_exec(move || crate::placement::set_affinity(&cpus));
            }
        }
        let child = command
            .spawn()
            .map_err(|e| format!("start {}: {e}", program.display()))?;
        let pgid = child.id();
        GROUPS.lock().expect("process registry").push(pgid);
        Ok(Group { child, pgid })
    }

    /// `Some(status)` when the group leader has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // TERM first, for an orderly exit; nothing is measured after this, so Sluice's grace
        // period (it waits for in-flight streams) is cut short by KILL on the whole group.
        signal_group(self.pgid, "TERM");
        let deadline = Instant::now() + Duration::from_millis(100);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        signal_group(self.pgid, "KILL");
        let _ = self.child.wait();
        GROUPS
            .lock()
            .expect("process registry")
            .retain(|&g| g != self.pgid);
    }
}

/// kill(1) on the whole group (`std` has no kill(2) for a group, and libc is not a dependency).
fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{pgid}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Stops every group still registered (Ctrl-C, watchdog): the `Drop` guards will not run.
pub fn kill_all() {
    let groups = GROUPS
        .lock()
        .map(|g| g.clone())
        .unwrap_or_else(|e| e.into_inner().clone());
    for pgid in groups {
        signal_group(pgid, "KILL");
    }
}

/// Runs a command to completion and returns its stdout and stderr, for version strings and
/// facts about the machine.
pub fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Some(text.trim().to_string())
}

/// The path of `name` on PATH (or in the sbin directories, where nginx and HAProxy live and
/// which a non-root PATH often lacks).
pub fn find_program(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"])
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| {
            use std::os::unix::fs::PermissionsExt;
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        });
    found
}

/// A temporary directory, removed when dropped unless `SLUICE_LOAD_KEEP=1`.
pub struct TempDir {
    pub path: std::path::PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> Result<TempDir, String> {
        let path = std::env::temp_dir().join(format!(
            "sluice-load-{}-{label}-{}",
            std::process::id(),
            crate::clock::now_ns()
        ));
        std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var("SLUICE_LOAD_KEEP").as_deref() == Ok("1") {
            eprintln!("kept {}", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
