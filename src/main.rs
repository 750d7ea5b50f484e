//! The `sluice` command line: run, check a config, serve the demo upstream alone, or add an
//! API key.

use clap::{Parser, Subcommand};
use sluice::auth::{self, KeyDigest, KeyStore};
use sluice::config::Config;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "An edge reverse proxy for LLM token streams (Server-Sent Events)",
    long_about = "An edge reverse proxy for LLM token streams (Server-Sent Events).\n\n\
        `sluice -c FILE` runs the proxy with a YAML config; without -c it runs the embedded \
        default config (a built-in demo upstream, no network needed).\n\
        `sluice check -c FILE` validates a config and exits non-zero naming the offending key.\n\
        `sluice keys add USER --file keys.yaml` creates an API key for `auth: { mode: keys }`."
)]
struct Cli {
    /// YAML config file (default: the embedded conf/sluice.yaml)
    #[arg(short = 'c', long = "config", global = true)]
    config: Option<PathBuf>,
    /// Take over the listening sockets of a running Sluice (zero-downtime upgrade)
    #[arg(short = 'u', long)]
    upgrade: bool,
    /// Run in the background; the PID goes to `server.pid_file` (for systemd `Type=forking`)
    #[arg(short = 'd', long)]
    daemon: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default when no command is given)
    Run,
    /// Validate the config and exit: 0 when valid, 1 with the offending key otherwise
    Check,
    /// Serve only the built-in demo upstream (OpenAI-style streaming chat completions)
    Demo {
        /// Address to listen on
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: String,
    },
    /// Manage API keys for `auth: { mode: keys }`
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Generate a new key for USER; print it and its keys file entry (only the digest is stored)
    Add {
        /// The user the key belongs to (limits and usage are counted per user)
        user: String,
        /// Key id shown in logs and usage records (default: `k` + 8 random hex characters)
        #[arg(long)]
        key_id: Option<String>,
        /// Tenant recorded with the key's usage
        #[arg(long)]
        tenant: Option<String>,
        /// Concurrent streams allowed for this key (overrides limits.per_key_streams)
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        max_streams: Option<u32>,
        /// Append the entry to this keys file (created when missing)
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

fn load(path: &Option<PathBuf>) -> Result<Config, String> {
    match path {
        Some(path) => Config::load(path).map_err(|e| format!("{}: {e}", path.display())),
        None => Config::embedded_default().map_err(|e| format!("embedded default config: {e}")),
    }
}

/// `sluice keys add`: prints the key first, so `| head -1` scripts can take it.
fn keys_add(
    user: &str,
    key_id: Option<String>,
    tenant: Option<&str>,
    max_streams: Option<u32>,
    file: Option<&Path>,
) -> Result<(), String> {
    auth::check_user(user)?;
    let key_id = key_id.unwrap_or_else(auth::generate_key_id);
    auth::check_key_id(&key_id)?;
    if let Some(tenant) = tenant {
        auth::check_tenant(tenant)?;
    }
    let key = auth::generate_key();
    let line = auth::entry_line(&key, user, &key_id, tenant, max_streams);
    let destination = match file {
        Some(path) => {
            let keys = append_key_entry(path, &key, &key_id, &line)?;
            format!(
                "# Appended to {} ({keys} {}); a running Sluice picks it up within ~2 s, \
                 or at once on SIGHUP.",
                path.display(),
                if keys == 1 { "key" } else { "keys" }
            )
        }
        None => "# Add this entry under `keys:` in the keys file:".to_string(),
    };
    println!("key: {key}");
    println!(
        "# Store this key now: Sluice keeps only its SHA-256 digest, so it cannot be shown again."
    );
    println!("{destination}");
    println!("{line}");
    Ok(())
}

/// Appends `line` to the keys file at `path` (creating it), checking the file before and
/// after; returns the number of keys in it.
fn append_key_entry(path: &Path, key: &str, key_id: &str, line: &str) -> Result<usize, String> {
    let shown = path.display().to_string();
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("cannot read {shown}: {e}")),
    };
    let old_text = existing.as_deref().unwrap_or(auth::NEW_KEYS_FILE_HEADER);
    let old = if auth::is_blank_yaml(old_text) {
        KeyStore::default()
    } else {
        KeyStore::parse(old_text, &shown).map_err(|e| e.to_string())?
    };
    if old.contains_key_id(key_id) {
        return Err(format!(
            "key_id `{key_id}` is already in {shown}: choose another with --key-id"
        ));
    }
    let new_text = auth::append_entry(old_text, line).map_err(|e| format!("{shown}: {e}"))?;
    // The edit is textual: make sure the file will still say what we mean before writing it.
    let new = KeyStore::parse(&new_text, &shown)
        .map_err(|e| format!("appending would break {shown}: {e}"))?;
    if new.len() != old.len() + 1 || new.lookup(&KeyDigest::of(key)).is_none() {
        return Err(format!(
            "appending to {shown} would not add the key; add the entry by hand"
        ));
    }
    let written = match existing {
        // Appending keeps the file's inode, permissions and any symlink pointing at it.
        Some(_) => std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(&new_text.as_bytes()[old_text.len()..])),
        None => std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .and_then(|mut f| f.write_all(new_text.as_bytes())),
    };
    written.map_err(|e| format!("cannot write {shown}: {e}"))?;
    let reread = KeyStore::load(path).map_err(|e| format!("after writing: {e}"))?;
    Ok(reread.len())
}

/// Sluice's own log, to stderr through a writer thread (`line_sink`). For `run`, only after the
/// fork of `-d`: a fork keeps only the thread that called it, and a writer thread (or a lock it
/// held) would not come along.
fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .target(env_logger::Target::Pipe(Box::new(
            sluice::telemetry::line_sink::StderrLines,
        )))
        .write_style(env_logger::WriteStyle::Never)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run);
    if !matches!(command, Command::Run) {
        init_logging();
    }
    match command {
        Command::Check => match load(&cli.config) {
            Ok(_) => {
                let name = cli
                    .config
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "embedded default config".into());
                println!("{name}: ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Demo { listen } => {
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            runtime.block_on(async {
                match tokio::net::TcpListener::bind(&listen).await {
                    Ok(listener) => {
                        eprintln!("demo upstream listening on http://{listen}");
                        sluice::demo::serve(listener).await;
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("cannot listen on {listen}: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Command::Keys {
            command:
                KeysCommand::Add {
                    user,
                    key_id,
                    tenant,
                    max_streams,
                    file,
                },
        } => match keys_add(
            &user,
            key_id,
            tenant.as_deref(),
            max_streams,
            file.as_deref(),
        ) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run => {
            let config = match load(&cli.config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let pid_file = Path::new(&config.server.pid_file);
            let pid_written = if cli.daemon {
                sluice::daemon::daemonize(pid_file)
            } else {
                sluice::daemon::write_pid_file(pid_file, std::process::id())
            };
            if let Err(e) = pid_written {
                eprintln!("server.pid_file: cannot write {}: {e}", pid_file.display());
                return ExitCode::FAILURE;
            }
            init_logging();
            let options = sluice::RunOptions {
                upgrade: cli.upgrade,
            };
            let server = match sluice::build_server(&config, &options) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{e}");
                    // No process of this PID serves: a PID file left behind would say one does.
                    let _ = std::fs::remove_file(pid_file);
                    return ExitCode::FAILURE;
                }
            };
            for listener in &config.listen {
                let scheme = if listener.tls.is_some() {
                    "https"
                } else {
                    "http"
                };
                eprintln!("sluice listening on {scheme}://{}", listener.addr);
            }
            if let Some(admin) = &config.admin {
                eprintln!("admin on http://{admin} (/healthz, /readyz, /metrics, /limits)");
            }
            sluice::run(server)
        }
    }
}
