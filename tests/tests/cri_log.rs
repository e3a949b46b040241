//! The shim writing a container's log in the CRI format itself (stdio URI `crilog://`), and
//! reopening it after rotation through crust's `crust.shim.v1.Logs` service. crust only: the Go
//! shim has neither.

use std::fs;
use std::time::Duration;

use crust_proto::ttrpc::Code;
use crust_tests::command::wait_until;
use crust_tests::direct::{Direct, code_of};
use crust_tests::shim::Shim;

const LIMIT: Duration = Duration::from_secs(20);

/// The records of a CRI log: (stream, tag, content), after checking each timestamp.
fn records(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .map(|line| {
            let mut fields = line.splitn(4, ' ');
            let time = fields.next().unwrap_or_default();
            assert!(
                time.len() == 30 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
                "timestamp {time:?} in {line:?}"
            );
            let mut next = || fields.next().unwrap_or_default().to_string();
            (next(), next(), next())
        })
        .collect()
}

fn record(stream: &str, tag: &str, content: &str) -> (String, String, String) {
    (stream.into(), tag.into(), content.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shim_writes_cri_records_and_reopens_the_log() {
    let direct = Direct::with_shim("cri_log", Shim::Crust).await;
    let log = direct.scratch("pods/c/0.log");
    fs::create_dir_all(log.parent().expect("log dir")).expect("log dir");
    let bundle = direct.bundle(
        "logged",
        &[
            "sh",
            "-c",
            "echo hello; echo oops >&2; echo 0123456789abc; read go; echo after; printf tail",
        ],
        &[],
    );
    let api = direct.start_and_connect(&bundle).await;
    let uri = format!("crilog://{}?max_line_size=8", log.display());
    let mut request = bundle.create_request_with_stdin();
    request.stdout = uri.clone();
    request.stderr = uri;
    api.create(&request).await.expect("create");
    let no_exec = api.reopen_log("logged", "nope").await.unwrap_err();
    assert_eq!(code_of(&no_exec), Some(Code::NOT_FOUND), "{no_exec:?}");
    api.start("logged").await.expect("start");

    // Everything before `read` is in the log: rotate it as kubelet does, and reopen.
    let before = wait_until(LIMIT, || {
        fs::read_to_string(&log)
            .is_ok_and(|text| text.contains(" F 89abc") && text.contains(" F oops"))
    });
    assert!(before, "{:?}", fs::read_to_string(&log));
    let rotated = log.with_extension("log.1");
    fs::rename(&log, &rotated).expect("rotate");
    api.reopen_log("logged", "").await.expect("reopen");
    bundle.write_stdin(b"\n");
    assert_eq!(api.wait("logged").await.expect("wait").exit_status, 0);
    api.delete("logged").await.expect("delete");

    let mut first = records(&fs::read_to_string(&rotated).expect("rotated log"));
    // stdout and stderr are copied independently: compare each stream in order.
    first.sort_by_key(|(stream, _, _)| stream == "stderr");
    assert_eq!(
        first,
        [
            record("stdout", "F", "hello"),
            record("stdout", "P", "01234567"),
            record("stdout", "F", "89abc"),
            record("stderr", "F", "oops"),
        ]
    );
    let second = records(&fs::read_to_string(&log).expect("reopened log"));
    // What has no line end when the process exits is a partial record.
    assert_eq!(
        second,
        [
            record("stdout", "F", "after"),
            record("stdout", "P", "tail")
        ]
    );

    let unknown = api.reopen_log("nosuch", "").await.unwrap_err();
    assert_eq!(code_of(&unknown), Some(Code::NOT_FOUND), "{unknown:?}");
    let _ = api.shutdown("logged").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminals_output_is_logged_as_stdout_without_carriage_returns() {
    let direct = Direct::with_shim("cri_log_tty", Shim::Crust).await;
    let log = direct.scratch("tty.log");
    let bundle = direct.bundle_with(
        "tty",
        &["sh", "-c", "echo first; echo second >&2"],
        &[],
        |spec| {
            if let Some(process) = spec.process_mut() {
                process.set_terminal(Some(true));
            }
        },
    );
    let api = direct.start_and_connect(&bundle).await;
    let mut request = bundle.create_request();
    request.terminal = true;
    request.stdout = format!("crilog://{}", log.display());
    request.stderr = String::new();
    api.create(&request).await.expect("create");
    api.start("tty").await.expect("start");
    assert_eq!(api.wait("tty").await.expect("wait").exit_status, 0);
    api.delete("tty").await.expect("delete");
    // A terminal has one stream, and it ends its lines with \r\n.
    assert_eq!(
        records(&fs::read_to_string(&log).expect("log")),
        [
            record("stdout", "F", "first"),
            record("stdout", "F", "second")
        ]
    );
    let _ = api.shutdown("tty").await;
}
