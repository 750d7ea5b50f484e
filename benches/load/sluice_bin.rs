//! Finds the release `sluice` binary (`CARGO_BIN_EXE_sluice` is not given to benches) and builds
//! it when it is missing or older than the sources, so that the harness always measures the code
//! in the tree.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

pub struct SluiceBinary {
    pub path: PathBuf,
    pub rebuilt: bool,
    /// Older than the sources (a rebuild failed, e.g. another engineer's edit in progress).
    pub stale: bool,
    pub note: String,
}

const BUILD_LIMIT: Duration = Duration::from_secs(30 * 60);

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        Some(dir) => manifest_dir().join(dir),
        None => manifest_dir().join("target"),
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    path.metadata().ok()?.modified().ok()
}

/// The newest modification time of the files the binary is built from.
fn newest_source() -> SystemTime {
    let root = manifest_dir();
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut stack = vec![root.join("src")];
    for file in ["Cargo.toml", "Cargo.lock", "build.rs"] {
        if let Some(t) = modified(&root.join(file)) {
            newest = newest.max(t);
        }
    }
    // Bounded walk: the source tree has a few hundred entries at most.
    for _ in 0..10_000 {
        let Some(dir) = stack.pop() else { break };
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(t) = modified(&path) {
                newest = newest.max(t);
            }
        }
    }
    newest
}

pub fn locate_or_build() -> Result<SluiceBinary, String> {
    let path = target_dir().join("release").join("sluice");
    let fresh = |p: &Path| modified(p).is_some_and(|t| t >= newest_source());
    if fresh(&path) {
        return Ok(SluiceBinary {
            path,
            rebuilt: false,
            stale: false,
            note: "release binary up to date".into(),
        });
    }
    eprintln!(
        "load: {} is missing or older than the sources: cargo build --release --bin sluice",
        path.display()
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--release", "--bin", "sluice"])
        .current_dir(manifest_dir());
    // `cargo bench` runs this process with the bench's own CARGO_PKG_NAME, CARGO_MANIFEST_DIR,
    // OUT_DIR…; build scripts (ring's) track those, so passing them on would rebuild half the
    // dependency tree here and again in the next `cargo bench`. Keep only the user's settings.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let user_setting = [
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_",
            "CARGO_PROFILE_",
            "CARGO_NET_",
            "CARGO_HTTP_",
            "CARGO_REGISTR",
            "CARGO_TERM_",
            "CARGO_INCREMENTAL",
        ]
        .iter()
        .any(|p| key.starts_with(p));
        if (key.starts_with("CARGO") && !user_setting) || key == "OUT_DIR" {
            command.env_remove(&key);
        }
    }
    let built = command
        .spawn()
        .map_err(|e| format!("cargo build: {e}"))
        .and_then(|mut child| {
            let deadline = Instant::now() + BUILD_LIMIT;
            loop {
                match child.try_wait() {
                    Ok(Some(status)) if status.success() => return Ok(()),
                    Ok(Some(status)) => return Err(format!("cargo build failed: {status}")),
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err("cargo build took over 30 minutes".into());
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(200)),
                    Err(e) => return Err(format!("cargo build: {e}")),
                }
            }
        });
    match built {
        // cargo decides what is up to date (a source file outside the crate may be newer).
        Ok(()) if path.exists() => Ok(SluiceBinary {
            stale: false,
            path,
            rebuilt: true,
            note: "rebuilt with cargo build --release".into(),
        }),
        Ok(()) => Err(format!("cargo build did not produce {}", path.display())),
        Err(e) if path.exists() => Ok(SluiceBinary {
            path,
            rebuilt: false,
            stale: true,
            note: format!("{e}; measuring the existing, older binary"),
        }),
        Err(e) => Err(e),
    }
}
