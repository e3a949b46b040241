//! Which transport and subprotocol a client gets: SPDY/3.1 with kubelet's
//! `X-Stream-Protocol-Version` list, or WebSocket with `Sec-WebSocket-Protocol`, chosen in the
//! client's order of preference among those crustd speaks.

use http::HeaderMap;

use super::remote::StatusFormat;

/// The SPDY subprotocols of exec and attach, newest first.
pub const SPDY_REMOTECOMMAND: [&str; 4] = [
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
/// The SPDY subprotocol of port-forward.
pub const SPDY_PORTFORWARD: [&str; 1] = ["portforward.k8s.io"];
/// The WebSocket subprotocols of exec and attach.
pub const WEBSOCKET_REMOTECOMMAND: [&str; 5] = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "base64.channel.k8s.io",
    "channel.k8s.io",
];
/// The WebSocket subprotocols of port-forward.
pub const WEBSOCKET_PORTFORWARD: [&str; 4] = [
    "v4.channel.k8s.io",
    "portforward.k8s.io",
    "v4.base64.channel.k8s.io",
    "base64.channel.k8s.io",
];

/// The connection a client asked to upgrade to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// SPDY/3.1 with this subprotocol ("" when the client named none: the oldest protocol).
    Spdy(String),
    /// WebSocket with this subprotocol ("" when the client named none).
    WebSocket(String),
}

/// Why a client's upgrade is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not an upgrade to SPDY/3.1 or WebSocket (HTTP 400).
    NotAnUpgrade,
    /// None of the client's subprotocols is spoken here (HTTP 403, with ours listed).
    NoCommonProtocol(&'static [&'static str]),
}

/// Chooses the transport and subprotocol for a request to `kind` (exec, attach,
/// portforward) with `headers`.
pub fn negotiate(kind: &str, headers: &HeaderMap) -> Result<Transport, Refusal> {
    let upgrade = headers
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let forward = kind == "portforward";
    if upgrade.eq_ignore_ascii_case("SPDY/3.1") {
        let ours: &'static [&'static str] = if forward {
            &SPDY_PORTFORWARD
        } else {
            &SPDY_REMOTECOMMAND
        };
        let theirs = listed(headers, "x-stream-protocol-version");
        choose(&theirs, ours).map(Transport::Spdy)
    } else if upgrade.eq_ignore_ascii_case("websocket") {
        let ours: &'static [&'static str] = if forward {
            &WEBSOCKET_PORTFORWARD
        } else {
            &WEBSOCKET_REMOTECOMMAND
        };
        let theirs = listed(headers, "sec-websocket-protocol");
        choose(&theirs, ours).map(Transport::WebSocket)
    } else {
        Err(Refusal::NotAnUpgrade)
    }
}

/// Every value of header `name`, comma-separated lists split.
fn listed(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The first of `theirs` that is one of `ours`; "" when they named none.
fn choose(theirs: &[String], ours: &'static [&'static str]) -> Result<String, Refusal> {
    if theirs.is_empty() {
        return Ok(String::new());
    }
    theirs
        .iter()
        .find(|p| ours.contains(&p.as_str()))
        .cloned()
        .ok_or(Refusal::NoCommonProtocol(ours))
}

/// How an exec or attach outcome is reported under `protocol`.
pub fn status_format(protocol: &str) -> StatusFormat {
    if protocol.starts_with("v4.") || protocol.starts_with("v5.") {
        StatusFormat::Json
    } else {
        StatusFormat::Text
    }
}

/// Whether a WebSocket subprotocol carries its payloads in base64 text messages.
pub fn is_base64(protocol: &str) -> bool {
    protocol.contains("base64.")
}

/// Whether a SPDY exec or attach client sends terminal sizes (v3 on).
pub fn spdy_resizes(protocol: &str) -> bool {
    protocol.starts_with("v3.") || protocol.starts_with("v4.")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, http::HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn spdy_takes_the_clients_first_known_protocol() {
        let h = headers(&[
            ("upgrade", "SPDY/3.1"),
            ("x-stream-protocol-version", "v5.channel.k8s.io"),
            ("x-stream-protocol-version", "v4.channel.k8s.io"),
            ("x-stream-protocol-version", "v3.channel.k8s.io"),
        ]);
        assert_eq!(
            negotiate("exec", &h),
            Ok(Transport::Spdy("v4.channel.k8s.io".into()))
        );
        assert_eq!(
            negotiate("portforward", &h),
            Err(Refusal::NoCommonProtocol(&SPDY_PORTFORWARD))
        );
        let h = headers(&[("upgrade", "spdy/3.1")]);
        assert_eq!(negotiate("attach", &h), Ok(Transport::Spdy(String::new())));
    }

    #[test]
    fn websocket_protocols_come_as_a_list() {
        let h = headers(&[
            ("upgrade", "websocket"),
            (
                "sec-websocket-protocol",
                "v6.channel.k8s.io, v5.channel.k8s.io,v4.channel.k8s.io",
            ),
        ]);
        assert_eq!(
            negotiate("exec", &h),
            Ok(Transport::WebSocket("v5.channel.k8s.io".into()))
        );
        assert_eq!(
            negotiate("portforward", &h),
            Ok(Transport::WebSocket("v4.channel.k8s.io".into()))
        );
        assert_eq!(
            negotiate("exec", &headers(&[("upgrade", "h2c")])),
            Err(Refusal::NotAnUpgrade)
        );
        assert_eq!(
            negotiate("exec", &HeaderMap::new()),
            Err(Refusal::NotAnUpgrade)
        );
    }

    #[test]
    fn formats_follow_the_protocol_version() {
        assert_eq!(status_format("v4.channel.k8s.io"), StatusFormat::Json);
        assert_eq!(status_format("v5.channel.k8s.io"), StatusFormat::Json);
        assert_eq!(
            status_format("v4.base64.channel.k8s.io"),
            StatusFormat::Json
        );
        assert_eq!(status_format("v3.channel.k8s.io"), StatusFormat::Text);
        assert_eq!(status_format(""), StatusFormat::Text);
        assert!(is_base64("base64.channel.k8s.io"));
        assert!(!is_base64("v5.channel.k8s.io"));
        assert!(spdy_resizes("v3.channel.k8s.io"));
        assert!(!spdy_resizes("v2.channel.k8s.io"));
    }
}
