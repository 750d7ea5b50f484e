//! The `sluice` command line: run, check a config, or serve the demo upstream alone.

use clap::{Parser, Subcommand};
use sluice::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "An edge reverse proxy for LLM token streams (Server-Sent Events)",
    long_about = "An edge reverse proxy for LLM token streams (Server-Sent Events).\n\n\
        `sluice -c FILE` runs the proxy with a YAML config; without -c it runs the embedded \
        default config (a built-in demo upstream, no network needed).\n\
        `sluice check -c FILE` validates a config and exits non-zero naming the offending key."
)]
struct Cli {
    /// YAML config file (default: the embedded conf/sluice.yaml)
    #[arg(short = 'c', long = "config", global = true)]
    config: Option<PathBuf>,
    /// Take over the listening sockets of a running Sluice (zero-downtime upgrade)
    #[arg(short = 'u', long)]
    upgrade: bool,
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
}

fn load(path: &Option<PathBuf>) -> Result<Config, String> {
    match path {
        Some(path) => Config::load(path).map_err(|e| format!("{}: {e}", path.display())),
        None => Ok(Config::embedded_default()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match cli.command.unwrap_or(Command::Run) {
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
        Command::Run => {
            let config = match load(&cli.config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let options = sluice::RunOptions {
                upgrade: cli.upgrade,
            };
            let server = match sluice::build_server(&config, &options) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            for listener in &config.listen {
                eprintln!("sluice listening on http://{}", listener.addr);
            }
            if let Some(admin) = &config.admin {
                eprintln!("admin on http://{admin} (/healthz, /metrics)");
            }
            server.run_forever()
        }
    }
}
