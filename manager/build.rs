//! Compiles the pod infra process (`pause/main.rs`) as a static binary and leaves it in
//! `OUT_DIR` for crustd to embed: it runs inside an empty root file system, so it can depend
//! on nothing.

use std::path::PathBuf;
use std::process::Command;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=pause/main.rs");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("cargo sets OUT_DIR")?);
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let target = std::env::var("TARGET")?;
    let output = out_dir.join("crust-pause");
    let status = Command::new(rustc)
        .args([
            "--edition",
            "2024",
            "--crate-name",
            "crust_pause",
            "--target",
            &target,
        ])
        .args([
            "-C",
            "opt-level=z",
            "-C",
            "panic=abort",
            "-C",
            "strip=symbols",
        ])
        .args(["-C", "target-feature=+crt-static", "-C", "codegen-units=1"])
        .arg("-o")
        .arg(&output)
        .arg("pause/main.rs")
        .status()?;
    if !status.success() {
        return Err(format!("compiling pause/main.rs failed: {status}").into());
    }
    Ok(())
}
