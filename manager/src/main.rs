//! crustd: the CRI server kubelet talks to. It keeps images, and turns pods and containers into
//! bundles run by crust's shim, one shim per pod.

mod authority;
mod config;
mod connection;
mod cri;
mod error;
mod failpoints;
mod images;
mod network;
mod runtime;
mod server;
mod streaming;

use std::path::PathBuf;
use std::process::ExitCode;

use config::{Config, DEFAULT_CONFIG_PATH};

const USAGE: &str = "usage: crustd [--config FILE]   (default /etc/crust/crustd.toml; log level from RUST_LOG, default info)";

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let _crash_points = failpoints::setup();
    let mut args = std::env::args().skip(1);
    let mut config_path = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" => match args.next() {
                Some(path) => config_path = Some(PathBuf::from(path)),
                None => return usage_error("--config needs a file"),
            },
            "--version" => {
                println!("crustd {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => return usage_error(&format!("unknown argument {other}")),
        }
    }
    let explicit = config_path.is_some();
    let path = config_path.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    let config = match Config::load(&path, explicit) {
        Ok(config) => config,
        Err(error) => {
            log::error!("{error}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            log::error!("start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(server::serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            log::error!("{error}");
            ExitCode::FAILURE
        }
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("crustd: {message}\n{USAGE}");
    ExitCode::from(2)
}
