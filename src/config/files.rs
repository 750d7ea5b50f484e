//! The files Sluice writes: the PID file (written at every start, by renaming over it), the upgrade
//! socket (bound by `sluice -u`, which first removes whatever has its name) and the usage ledger
//! (appended, rotated to `PATH.1` …). Each must be a file of its kind where it can be made, and
//! none may be a file Sluice reads (a keys file, a certificate, the config itself) or another of
//! them: `check` passed such configs, and the start overwrote and then removed the keys file, or
//! an upgrade deleted a certificate.

use super::Config;
use std::path::{Path, PathBuf};

/// Longest path a Unix socket can be bound at (`sun_path` holds 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// What kind of file a written path may already be.
#[derive(Clone, Copy)]
enum Kind {
    Regular,
    Socket,
}

/// `server.pid_file` and `server.upgrade_sock` as files of their kind. (The ledger's own checks
/// are `check_ledger`'s.)
pub(super) fn check_server_files(config: &Config) -> Result<(), (String, String)> {
    for (key, path, kind) in [
        ("server.pid_file", &config.server.pid_file, Kind::Regular),
        (
            "server.upgrade_sock",
            &config.server.upgrade_sock,
            Kind::Socket,
        ),
    ] {
        check_writable_file(Path::new(path), kind).map_err(|m| (key.to_string(), m))?;
    }
    if config.server.upgrade_sock.len() > MAX_SOCKET_PATH {
        return Err((
            "server.upgrade_sock".into(),
            format!("is longer than a Unix socket path may be ({MAX_SOCKET_PATH} bytes)"),
        ));
    }
    Ok(())
}

/// A path Sluice makes a file of `kind` at: named, in a directory, not something else already.
fn check_writable_file(path: &Path, kind: Kind) -> Result<(), String> {
    if path.as_os_str().is_empty() {
        return Err("is empty".into());
    }
    if path.as_os_str().as_encoded_bytes().ends_with(b"/") {
        return Err(format!("{} names a directory, not a file", path.display()));
    }
    super::validate::existing_dir_of(path)?;
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    use std::os::unix::fs::FileTypeExt;
    let fits = match kind {
        Kind::Regular => meta.is_file(),
        Kind::Socket => meta.file_type().is_socket(),
    };
    if fits {
        return Ok(());
    }
    let what = match kind {
        Kind::Regular => "a regular file",
        Kind::Socket => "a socket (an upgrade removes what has its name)",
    };
    Err(format!("{} exists and is not {what}", path.display()))
}

/// Checks that no file Sluice writes is one it reads, or another it writes. `config_file` is
/// the file the config came from, when it came from one.
pub(super) fn check_not_overwritten(
    config: &Config,
    config_file: Option<&Path>,
) -> Result<(), (String, String)> {
    let mut written: Vec<(String, PathBuf)> = vec![
        (
            "server.pid_file".into(),
            config.server.pid_file.clone().into(),
        ),
        (
            "server.pid_file".into(),
            crate::daemon::pid_temp_path(Path::new(&config.server.pid_file)),
        ),
        (
            "server.upgrade_sock".into(),
            config.server.upgrade_sock.clone().into(),
        ),
    ];
    if let Some(ledger) = &config.usage.ledger {
        written.push(("usage.ledger".into(), ledger.clone()));
        if config.usage.rotate_bytes.is_some() {
            for n in 1..=config.usage.keep {
                written.push((
                    "usage.ledger".into(),
                    crate::usage::ledger::numbered(ledger, n),
                ));
            }
        }
    }
    let read: Vec<(String, Identity)> = files_read(config, config_file)
        .into_iter()
        .map(|(key, path)| (key, identity(&path)))
        .collect();
    let written: Vec<(String, PathBuf, Identity)> = written
        .into_iter()
        .map(|(key, path)| {
            let id = identity(&path);
            (key, path, id)
        })
        .collect();
    for (i, (key, path, id)) in written.iter().enumerate() {
        let other = read
            .iter()
            .find(|(_, other)| other == id)
            .map(|(k, _)| k.clone())
            .or_else(|| {
                written[..i]
                    .iter()
                    .find(|(k, _, other)| other == id && k != key)
                    .map(|(k, _, _)| k.clone())
            });
        if let Some(other) = other {
            return Err((
                key.clone(),
                format!(
                    "{} is also {other}: Sluice writes (and replaces or removes) this file",
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Every file the config names for Sluice to read, with its key.
fn files_read(config: &Config, config_file: Option<&Path>) -> Vec<(String, PathBuf)> {
    let mut read: Vec<(String, PathBuf)> = Vec::new();
    if let Some(path) = config_file {
        read.push(("the config file".into(), path.to_path_buf()));
    }
    for (i, listener) in config.listen.iter().enumerate() {
        let Some(tls) = &listener.tls else { continue };
        read.push((format!("listen[{i}].tls.cert"), tls.cert.clone()));
        read.push((format!("listen[{i}].tls.key"), tls.key.clone()));
        for (j, sni) in tls.sni.iter().enumerate() {
            read.push((format!("listen[{i}].tls.sni[{j}].cert"), sni.cert.clone()));
            read.push((format!("listen[{i}].tls.sni[{j}].key"), sni.key.clone()));
        }
    }
    for (name, upstream) in &config.upstreams {
        if let Some(ca) = &upstream.ca_file {
            read.push((format!("upstreams.{name}.ca_file"), ca.clone()));
        }
    }
    if let super::LimitsBackend::Redis(redis) = &config.limits.backend {
        if let Some(ca) = &redis.ca_file {
            read.push(("limits.backend.ca_file".into(), ca.clone()));
        }
    }
    if let Some(keys) = &config.auth.keys_file {
        read.push(("auth.keys_file".into(), keys.clone()));
    }
    for (i, route) in config.routes.iter().enumerate() {
        if let Some(keys) = route.auth.as_ref().and_then(|a| a.keys_file.as_ref()) {
            read.push((format!("routes[{i}].auth.keys_file"), keys.clone()));
        }
    }
    read
}

/// The file a path names, whatever way it is written: the same inode (a hard link, a symbolic
/// one, `..`) when it exists, else the same path once its directory is resolved.
#[derive(Debug, PartialEq, Eq)]
enum Identity {
    Inode(u64, u64),
    Path(PathBuf),
}

fn identity(path: &Path) -> Identity {
    use std::os::unix::fs::MetadataExt;
    if let Ok(meta) = std::fs::metadata(path) {
        return Identity::Inode(meta.dev(), meta.ino());
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    match (std::fs::canonicalize(dir), path.file_name()) {
        (Ok(dir), Some(name)) => Identity::Path(dir.join(name)),
        _ => Identity::Path(path.to_path_buf()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_names_one_file_however_it_is_written() {
        let dir = std::env::temp_dir().join(format!("sluice-files-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("keys.yaml"), "").unwrap();
        std::os::unix::fs::symlink(dir.join("keys.yaml"), dir.join("link.yaml")).unwrap();
        std::fs::hard_link(dir.join("keys.yaml"), dir.join("hard.yaml")).unwrap();
        let keys = identity(&dir.join("keys.yaml"));
        assert_eq!(identity(&dir.join("sub/../keys.yaml")), keys);
        assert_eq!(identity(&dir.join("link.yaml")), keys);
        assert_eq!(identity(&dir.join("hard.yaml")), keys);
        assert_eq!(
            identity(&dir.join("sub/../new.pid")),
            identity(&dir.join("new.pid"))
        );
        assert_ne!(identity(&dir.join("new.pid")), keys);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
