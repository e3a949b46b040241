//! A pod's hostname: kubelet sends a DNS-1123 label, or a subdomain when the pod asks for its
//! FQDN as hostname. Linux would take almost any bytes, but a name outside that grammar could
//! not be resolved and only comes from a client that is not kubelet.

use super::invalid;
use crate::error::Result;

/// Longest label of a DNS name (RFC 1123).
const MAX_LABEL: usize = 63;

/// Refuses a non-empty hostname that is not dot-separated labels of letters, digits and `-`,
/// none empty, longer than 63 bytes, or starting or ending with `-`. An empty hostname is
/// a host-network pod's, which keeps the node's.
pub fn check(hostname: &str) -> Result<()> {
    if hostname.is_empty() {
        return Ok(());
    }
    for label in hostname.split('.') {
        let why = if label.is_empty() {
            "has an empty label"
        } else if label.len() > MAX_LABEL {
            "has a label longer than 63 bytes"
        } else if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            "has a character other than a letter, a digit, '-' or '.'"
        } else if label.starts_with('-') || label.ends_with('-') {
            "has a label starting or ending with '-'"
        } else {
            continue;
        };
        return Err(invalid(format!("pod hostname {hostname:?} {why}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::refused_for;
    use super::*;

    #[test]
    fn dns_labels_and_subdomains_pass() {
        for hostname in [
            "",
            "web-0",
            "nginx-deployment-7c79c4bf97-x2xkq",
            "web-0.web.default.svc.cluster.local",
            "Web0",
            "0web",
            &"a".repeat(MAX_LABEL),
        ] {
            check(hostname).unwrap();
        }
    }

    #[test]
    fn anything_else_is_refused_naming_the_hostname() {
        for hostname in [
            ".",
            "web..svc",
            ".web",
            "web.",
            "-web",
            "web-",
            "web.-svc",
            "web_0",
            "web 0",
            "web\n0",
            "web\0",
            "wéb",
            "web/0",
            &"a".repeat(MAX_LABEL + 1),
        ] {
            refused_for(check(hostname), "pod hostname");
        }
    }
}
