use std::ffi::OsString;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match crust_shim::run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // containerd shows this text in its own error when `start` or `delete` fails.
            eprintln!("containerd-shim-crust-v2: {error}");
            ExitCode::FAILURE
        }
    }
}
