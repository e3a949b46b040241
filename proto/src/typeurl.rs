//! Type URLs containerd writes into `google.protobuf.Any`, and packing without reflection.
//!
//! containerd registers protobuf messages under their full name with no
//! `type.googleapis.com/` prefix, and OCI runtime-spec structs (which are JSON, not protobuf)
//! under `types.containerd.io/opencontainers/runtime-spec/1/<Type>`.

use crate::protobuf::Message;
use crate::wellknown::Any;

/// `containerd.runc.v1.Options`: runtime options of the runc shims.
pub const RUNC_OPTIONS: &str = "containerd.runc.v1.Options";
/// `containerd.runc.v1.CheckpointOptions`.
pub const RUNC_CHECKPOINT_OPTIONS: &str = "containerd.runc.v1.CheckpointOptions";
/// `containerd.runc.v1.ProcessDetails`: attached to exec pids in `Pids` answers.
pub const RUNC_PROCESS_DETAILS: &str = "containerd.runc.v1.ProcessDetails";
/// An OCI `Process`, JSON-encoded.
pub const OCI_PROCESS: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
/// OCI `LinuxResources`, JSON-encoded.
pub const OCI_LINUX_RESOURCES: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";
/// The JSON of `runc features` (OCI runtime-spec `features.Features`).
pub const OCI_FEATURES: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/features/Features";
/// cgroup v1 metrics.
pub const CGROUPS_V1_METRICS: &str = "io.containerd.cgroups.v1.Metrics";
/// cgroup v2 metrics.
pub const CGROUPS_V2_METRICS: &str = "io.containerd.cgroups.v2.Metrics";

/// Whether `any` carries a message of `type_url`, accepting the `type.googleapis.com/` form
/// other protobuf implementations write.
pub fn is(any: &Any, type_url: &str) -> bool {
    let url = any.type_url.as_str();
    url == type_url
        || url
            .rsplit_once('/')
            .is_some_and(|(_, name)| name == type_url && !type_url.contains('/'))
}

/// Packs `message` as an `Any` named `type_url`.
///
/// The generated `Any::pack` would build the message's reflection descriptor on first use,
/// which costs the shim heap for the rest of its life; the encoded bytes are all containerd reads.
pub fn pack<M: Message>(type_url: &str, message: &M) -> protobuf::Result<Any> {
    Ok(Any {
        type_url: type_url.to_string(),
        value: message.write_to_bytes()?,
        ..Default::default()
    })
}

/// Decodes the message inside `any`.
pub fn unpack<M: Message>(any: &Any) -> protobuf::Result<M> {
    M::parse_from_bytes(&any.value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runc_options::Options;

    #[test]
    fn pack_round_trips_and_names_the_type() {
        let options = Options {
            binary_name: "crun".into(),
            ..Default::default()
        };
        let any = pack(RUNC_OPTIONS, &options).unwrap();
        assert!(is(&any, RUNC_OPTIONS));
        assert!(!is(&any, RUNC_CHECKPOINT_OPTIONS));
        let back: Options = unpack(&any).unwrap();
        assert_eq!(back.binary_name, "crun");
    }

    #[test]
    fn googleapis_prefix_is_accepted_for_protobuf_names() {
        let any = Any {
            type_url: format!("type.googleapis.com/{RUNC_OPTIONS}"),
            ..Default::default()
        };
        assert!(is(&any, RUNC_OPTIONS));
        let json = Any {
            type_url: "example.com/opencontainers/runtime-spec/1/Process".into(),
            ..Default::default()
        };
        assert!(!is(&json, OCI_PROCESS));
    }
}
