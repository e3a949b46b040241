//! Generates crust's own ttrpc services (what containerd's API has no call for) from
//! `proto/crust/…` with the same generator containerd-shim-protos uses.

// A build script reports failure by panicking.
#![allow(clippy::expect_used)]

use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() {
    let inputs = [
        "proto/crust/shim/v1/logs.proto",
        "proto/crust/shim/v1/attach.proto",
    ];
    for input in inputs {
        println!("cargo:rerun-if-changed={input}");
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("crust");
    std::fs::create_dir_all(&out).expect("create output directory");
    Codegen::new()
        .inputs(inputs)
        .include("proto")
        .rust_protobuf()
        .rust_protobuf_customize(ProtobufCustomize::default().generate_accessors(false))
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .out_dir(&out)
        .run()
        .expect("generate crust's ttrpc services");
    // `include!` takes no inner attributes; the including module carries the allowances.
    for name in ["logs.rs", "logs_ttrpc.rs", "attach.rs", "attach_ttrpc.rs"] {
        let path = out.join(name);
        let text = std::fs::read_to_string(&path).expect("read generated code");
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("#![") && !l.starts_with("//!"))
            .collect();
        std::fs::write(&path, kept.join("\n")).expect("write generated code");
    }
}
