//! Writes the test busybox image (from busybox-static) as an OCI archive for `ctr images import`.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(path) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: busybox-image <archive.tar>");
        return ExitCode::FAILURE;
    };
    match crust_tests::image::write_oci_archive(&path) {
        Ok(()) => {
            println!("{} ({})", path.display(), crust_tests::image::IMAGE_REF);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("busybox-image: {e}");
            ExitCode::FAILURE
        }
    }
}
