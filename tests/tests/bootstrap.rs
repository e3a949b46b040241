//! crust's `start` as each containerd generation calls it.
//!
//! These run against crust's shim only: the Go shim installed here (containerd 1.6) predates
//! the 2.3 bootstrap protocol and the v3 task service.

use crust_proto::bootstrap::{BootstrapParams, BootstrapResult};
use crust_proto::protobuf::Message;
use crust_proto::runc_options::Options;
use crust_proto::task::{SERVICE_V2, SERVICE_V3, StateRequest, StateResponse};
use crust_proto::ttrpc::Code;
use crust_tests::command;
use crust_tests::direct::{Direct, TaskApi, code_of};
use crust_tests::shim::Shim;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_as_containerd_16_prints_a_plain_address() {
    let direct = Direct::with_shim("bootstrap_16", Shim::Crust).await;
    let bundle = direct.bundle("legacy", &["true"], &[]);
    let options = Options {
        binary_name: "runc".into(),
        ..Default::default()
    };
    let started = direct.start_shim_with_options(&bundle, &options);
    assert!(started.success(), "{started:?}");
    assert!(
        started.stderr.is_empty(),
        "containerd 1.6 reads stderr too: {started:?}"
    );
    let expected = format!("unix://{}", direct.shim_socket("legacy").display());
    assert_eq!(started.stdout, expected);
    let address_file = std::fs::read_to_string(bundle.dir.join("address")).expect("address file");
    assert_eq!(address_file, expected);
    let api = TaskApi::connect(&started.stdout, &direct.namespace).await;
    let _ = api.shutdown("legacy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_as_containerd_23_answers_a_bootstrap_result() {
    let direct = Direct::with_shim("bootstrap_23", Shim::Crust).await;
    let bundle = direct.bundle("modern", &["true"], &[]);
    let params = BootstrapParams {
        instance_id: "modern".into(),
        namespace: direct.namespace.clone(),
        containerd_ttrpc_address: format!("unix://{}", direct.events_address().display()),
        containerd_grpc_address: direct.containerd_address().display().to_string(),
        containerd_version: "2.3.4".into(),
        containerd_binary: "/usr/bin/containerd".into(),
        ..Default::default()
    };
    let stdin = params.write_to_bytes().expect("encode params");
    let started = direct.start_shim(&bundle, &stdin);
    assert!(started.success(), "{started:?}");
    let result = BootstrapResult::parse_from_bytes(&started.stdout_bytes).expect("BootstrapResult");
    assert_eq!(result.version, 3);
    assert_eq!(result.protocol, "ttrpc");
    assert_eq!(
        result.address,
        format!("unix://{}", direct.shim_socket("modern").display())
    );

    // The daemon answers under both service names.
    let mut api = TaskApi::connect(&result.address, &direct.namespace).await;
    for service in [SERVICE_V2, SERVICE_V3] {
        api.service = service;
        let request = StateRequest {
            id: "not-created".into(),
            ..Default::default()
        };
        let error = api
            .call::<_, StateResponse>("State", &request)
            .await
            .unwrap_err();
        assert_eq!(
            code_of(&error),
            Some(Code::NOT_FOUND),
            "{service}: {error:?}"
        );
    }
    // Every method is served: Pause, which the generated code would answer NotFound by
    // default, reaches crust and names the unknown container.
    let request = crust_proto::task::PauseRequest {
        id: "not-created".into(),
        ..Default::default()
    };
    let error = api
        .call::<_, crust_proto::wellknown::Empty>("Pause", &request)
        .await
        .unwrap_err();
    assert_eq!(code_of(&error), Some(Code::NOT_FOUND), "{error:?}");
    assert!(
        format!("{error:?}").contains("container not-created not found"),
        "{error:?}"
    );
    let _ = api.shutdown("modern").await;
}

#[test]
fn version_flag_prints_the_version() {
    let printed = command::run(
        std::process::Command::new(Shim::Crust.binary()).arg("-v"),
        None,
        std::time::Duration::from_secs(5),
    );
    assert!(printed.success(), "{printed:?}");
    assert!(
        printed
            .stdout
            .starts_with("containerd-shim-crust-v2:\n  Version:  "),
        "{printed:?}"
    );
}
