//! Parity as a comparison. Every case where the two shims could answer differently (an error
//! code, a message class, whether an event arrives) is one row of [`CASES`], which states what
//! containerd's Go shim does and what crust does. The suite runs against both shims; each run
//! checks its shim against its column, so the Go run proves the Go column and the crust run
//! proves crust's. Where the columns differ the row says why: that is the whole list of
//! deliberate differences, printed by `differences_table`.

use crate::shim::Shim;

/// One compared case.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    /// What is done.
    pub name: &'static str,
    /// What containerd's Go shim answers; `a|b` when it races between the two.
    pub go: &'static str,
    /// What crust answers.
    pub crust: &'static str,
    /// Why they differ (empty when they do not).
    pub why: &'static str,
}

/// Every compared case.
pub const CASES: &[Case] = &[
    Case {
        name: "start a running task",
        go: "UNKNOWN",
        crust: "FAILED_PRECONDITION",
        why: "the Go shim returns a plain error (gRPC Unknown); crust's state machine names the \
              refused transition, which containerd also understands",
    },
    Case {
        name: "delete a running task",
        go: "UNKNOWN",
        crust: "FAILED_PRECONDITION",
        why: "as for start: a state refusal, not an unknown failure",
    },
    Case {
        name: "kill an exited task",
        go: "NOT_FOUND",
        crust: "NOT_FOUND",
        why: "",
    },
    Case {
        name: "state of a deleted task",
        go: "NOT_FOUND",
        crust: "NOT_FOUND",
        why: "",
    },
    Case {
        name: "kill an unknown task",
        go: "NOT_FOUND",
        crust: "NOT_FOUND",
        why: "",
    },
    Case {
        name: "create with an id that is a path",
        go: "UNKNOWN",
        crust: "INVALID_ARGUMENT",
        why: "crust checks containerd's identifier rule before using the id in a path; the Go \
              shim passes it to runc, which refuses it (Unknown)",
    },
    Case {
        name: "create a task twice",
        go: "UNKNOWN",
        crust: "ALREADY_EXISTS",
        why: "the Go shim lets runc refuse the second create; crust knows the id is taken",
    },
    Case {
        name: "add an exec id twice",
        go: "ALREADY_EXISTS",
        crust: "ALREADY_EXISTS",
        why: "",
    },
    Case {
        name: "exec into a stopped task",
        go: "UNKNOWN",
        crust: "FAILED_PRECONDITION",
        why: "the Go shim lets `runc exec` fail on the stopped container (Unknown); crust \
              refuses the exec of a stopped task before running runc, as the Task API's state \
              rule says",
    },
    Case {
        name: "ctr exec into a stopped task",
        go: "unknown",
        crust: "failed precondition",
        why: "the same refusal as above, as ctr prints it",
    },
    Case {
        name: "resume a running task",
        go: "UNKNOWN",
        crust: "FAILED_PRECONDITION",
        why: "a state refusal, as for start",
    },
    Case {
        name: "update with resources that are not JSON",
        go: "UNKNOWN",
        crust: "INVALID_ARGUMENT",
        why: "crust parses the request before running runc; the Go shim fails unmarshalling \
              with a plain error",
    },
    Case {
        name: "checkpoint when criu cannot run",
        go: "runc's summary",
        crust: "criu's reason",
        why: "runc reports only `criu failed: type DUMP errno 0` and the log's path; crust adds \
              the first error criu wrote in that log (on this machine: `vdso: Failed to fill \
              self vdso symtable`)",
    },
    Case {
        name: "restore when criu cannot run",
        go: "runc's summary",
        crust: "criu's reason",
        why: "as for checkpoint: crust adds criu's own first error to runc's summary",
    },
    Case {
        name: "file:// output complete when Delete answers",
        go: "complete|partial",
        crust: "complete",
        why: "crust finishes copying a process's output before Delete answers; the Go shim \
              waits at most 2 s for its copy, and may lose part of it for good (next row)",
    },
    Case {
        name: "file:// output complete in the end",
        go: "complete|stderr lost",
        crust: "complete",
        why: "containerd 1.6's shim hands stdout's copier the log file itself and stderr's \
              copier a close-counting wrapper of it; when stdout ends first, its copier closes \
              the file, and stderr not yet copied fails on the closed file and is lost (seen \
              in a full test run under load: the file held only stdout). crust gives each \
              stream its own descriptor of the file",
    },
    Case {
        name: "ctr run output of 20 short-lived containers at once",
        go: "complete|some lost",
        crust: "complete",
        why: "containerd 1.6's shim gives a process's output at most 2 s to drain before \
              Delete closes it, and under load ctr's FIFO reader can be later than that (seen \
              in a local run: one `echo` of 20 printed nothing); crust waits up to 10 s",
    },
    Case {
        name: "OOM event for a task killed in its first milliseconds",
        go: "missed|seen",
        crust: "seen",
        why: "the Go shim starts watching for OOM only after Start returns, racing a task that \
              dies at once; crust watches from Create on",
    },
];

/// The case called `name`.
pub fn case(name: &str) -> Case {
    CASES
        .iter()
        .find(|c| c.name == name)
        .copied()
        .unwrap_or_else(|| panic!("no parity case {name:?} in tests/src/parity.rs"))
}

/// Checks that `shim` answered case `name` as its column says.
pub fn expect(shim: Shim, name: &str, observed: &str) {
    let case = case(name);
    let expected = if shim.is_crust() { case.crust } else { case.go };
    assert!(
        expected.split('|').any(|allowed| allowed == observed),
        "parity case {name:?}: {shim:?} answered {observed:?}, the table says {expected:?}"
    );
}

/// The name of a ttrpc code as the table writes it.
pub fn code_name(code: Option<crust_proto::ttrpc::Code>) -> String {
    code.map_or_else(|| "OK".to_string(), |code| format!("{code:?}"))
}

/// The error class containerd writes in a message (`ctr`'s output): the first of the gRPC
/// code texts it contains.
pub fn message_class(text: &str) -> &'static str {
    const CLASSES: &[&str] = &[
        "failed precondition",
        "not found",
        "already exists",
        "invalid argument",
        "deadline exceeded",
        "unavailable",
        "unknown",
    ];
    CLASSES
        .iter()
        .find(|class| text.contains(*class))
        .copied()
        .unwrap_or("no class")
}

/// The deliberate differences, as a table.
pub fn differences_table() -> String {
    let mut table = String::from("case | Go runc.v2 | crust | why\n");
    for case in CASES.iter().filter(|c| c.go != c.crust) {
        table.push_str(&format!(
            "{} | {} | {} | {}\n",
            case.name,
            case.go,
            case.crust,
            case.why.split_whitespace().collect::<Vec<_>>().join(" ")
        ));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_difference_says_why_and_every_agreement_does_not() {
        for case in CASES {
            assert_eq!(
                case.go != case.crust,
                !case.why.is_empty(),
                "{}: a difference needs a reason, an agreement none",
                case.name
            );
        }
        let names: std::collections::HashSet<_> = CASES.iter().map(|c| c.name).collect();
        assert_eq!(names.len(), CASES.len(), "case names are unique");
    }

    #[test]
    fn expectations_are_checked_per_shim() {
        expect(Shim::Crust, "start a running task", "FAILED_PRECONDITION");
        expect(Shim::GoRunc, "start a running task", "UNKNOWN");
        expect(
            Shim::GoRunc,
            "OOM event for a task killed in its first milliseconds",
            "missed",
        );
        let wrong =
            std::panic::catch_unwind(|| expect(Shim::Crust, "start a running task", "UNKNOWN"));
        assert!(wrong.is_err());
        assert_eq!(
            message_class("ctr: failed precondition: container stopped"),
            "failed precondition"
        );
        assert!(
            differences_table().contains("start a running task | UNKNOWN | FAILED_PRECONDITION")
        );
    }
}
