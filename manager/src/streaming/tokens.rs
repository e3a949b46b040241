//! The requests Exec, Attach and PortForward answered with a URL, kept until the client comes
//! for them: each under a random token that works once and for a minute, as kubelet's
//! streaming library keeps them, and at most [`MAX_PENDING`] at a time so that callers who
//! never connect cannot grow the cache.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::{ManagerError, Result};
use crate::runtime::interactive::Wanted;

/// How long a token may wait for its client.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Most tokens waiting at once.
pub const MAX_PENDING: usize = 1000;
/// Random bytes per token (6 bytes are 8 URL-safe characters, as kubelet's).
const TOKEN_BYTES: usize = 6;

/// What a client may do with a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamRequest {
    /// Run a command in a container.
    Exec {
        /// The container.
        container_id: String,
        /// The command.
        cmd: Vec<String>,
        /// Whether it gets a terminal.
        tty: bool,
        /// Which streams the client wants.
        streams: Wanted,
    },
    /// Join a container's own stdio.
    Attach {
        /// The container.
        container_id: String,
        /// Whether the container has a terminal.
        tty: bool,
        /// Which streams the client wants.
        streams: Wanted,
    },
    /// Connect to ports in a pod's network namespace.
    PortForward {
        /// The pod.
        pod_id: String,
    },
}

impl StreamRequest {
    /// The URL path this request is served under (`exec`, `attach`, `portforward`).
    pub fn kind(&self) -> &'static str {
        match self {
            StreamRequest::Exec { .. } => "exec",
            StreamRequest::Attach { .. } => "attach",
            StreamRequest::PortForward { .. } => "portforward",
        }
    }
}

struct Pending {
    request: StreamRequest,
    expires: Instant,
}

/// Requests waiting for their client, by token.
#[derive(Default)]
pub struct RequestCache {
    pending: Mutex<HashMap<String, Pending>>,
}

impl RequestCache {
    /// Keeps `request` and returns its new token.
    pub fn insert(&self, request: StreamRequest) -> Result<String> {
        self.insert_at(request, Instant::now())
    }

    fn insert_at(&self, request: StreamRequest, now: Instant) -> Result<String> {
        let mut pending = crate::runtime::lock(&self.pending);
        pending.retain(|_, p| p.expires > now);
        if pending.len() >= MAX_PENDING {
            return Err(ManagerError::ResourceExhausted(format!(
                "{MAX_PENDING} streaming requests are already waiting for their clients"
            )));
        }
        loop {
            let token = new_token()?;
            if pending.contains_key(&token) {
                continue;
            }
            pending.insert(
                token.clone(),
                Pending {
                    request,
                    expires: now + TOKEN_LIFETIME,
                },
            );
            return Ok(token);
        }
    }

    /// Takes the request of `token` for a client at URL path `kind`: None when the token is
    /// unknown, used, expired, or was issued for another kind of request.
    pub fn take(&self, kind: &str, token: &str) -> Option<StreamRequest> {
        self.take_at(kind, token, Instant::now())
    }

    fn take_at(&self, kind: &str, token: &str, now: Instant) -> Option<StreamRequest> {
        let mut pending = crate::runtime::lock(&self.pending);
        let found = pending.remove(token)?;
        (found.expires > now && found.request.kind() == kind).then_some(found.request)
    }
}

fn new_token() -> Result<String> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes)
        .map_err(|e| ManagerError::io("read random bytes", std::io::Error::other(e)))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(pod: &str) -> StreamRequest {
        StreamRequest::PortForward { pod_id: pod.into() }
    }

    #[test]
    fn a_token_works_once_for_its_own_kind() {
        let cache = RequestCache::default();
        let token = cache.insert(forward("p")).unwrap();
        assert_eq!(token.len(), 8);
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(cache.take("portforward", &token), Some(forward("p")));
        assert_eq!(cache.take("portforward", &token), None);
        let token = cache.insert(forward("p")).unwrap();
        // Asked for under another path, the token is gone too: a guess costs it.
        assert_eq!(cache.take("exec", &token), None);
        assert_eq!(cache.take("portforward", &token), None);
        assert_eq!(cache.take("portforward", "nonsense"), None);
    }

    #[test]
    fn tokens_expire_after_a_minute() {
        let cache = RequestCache::default();
        let start = Instant::now();
        let token = cache.insert_at(forward("p"), start).unwrap();
        let late = start + TOKEN_LIFETIME + Duration::from_millis(1);
        assert_eq!(cache.take_at("portforward", &token, late), None);
        let token = cache.insert_at(forward("q"), start).unwrap();
        let in_time = start + TOKEN_LIFETIME - Duration::from_millis(1);
        assert_eq!(
            cache.take_at("portforward", &token, in_time),
            Some(forward("q"))
        );
    }

    #[test]
    fn at_most_a_thousand_wait_and_expired_ones_make_room() {
        let cache = RequestCache::default();
        let start = Instant::now();
        for _ in 0..MAX_PENDING {
            cache.insert_at(forward("p"), start).unwrap();
        }
        assert!(matches!(
            cache.insert_at(forward("p"), start),
            Err(ManagerError::ResourceExhausted(_))
        ));
        let later = start + TOKEN_LIFETIME;
        assert!(cache.insert_at(forward("p"), later).is_ok());
    }
}
