//! Registry clients kept between pulls. Building one costs TLS setup (the system's root
//! certificates are loaded and parsed), and a fresh one has no open connection and no bearer
//! token, so every pull with its own client paid for all three. A client also remembers the
//! first credentials it used for each registry, so pulls share a client only when they carry
//! the same credentials.

use std::sync::Mutex;
use std::time::Duration;

use oci_client::Client;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;

/// How many sets of credentials keep a client; the least recently used one goes first.
const KEPT_CLIENTS: usize = 16;

/// How long a connection to a registry may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// One registry client per set of credentials, most recently used last.
pub(super) struct Clients {
    plain_http: Vec<String>,
    max_concurrent_downloads: usize,
    kept: Mutex<Vec<(RegistryAuth, Client)>>,
}

impl Clients {
    /// Clients that speak plain HTTP to the hosts in `plain_http` and HTTPS to all others.
    pub(super) fn new(plain_http: Vec<String>, max_concurrent_downloads: usize) -> Self {
        Self {
            plain_http,
            max_concurrent_downloads,
            kept: Mutex::new(Vec::new()),
        }
    }

    /// The client for pulls with `auth`, built on first use. Clones share connections,
    /// tokens and the credentials they were first used with. Building one loads and parses
    /// the system's root certificates (~0.1 s), so it runs on a blocking thread, outside the
    /// lock: no async worker and no other pull waits for it.
    pub(super) async fn for_auth(&self, auth: &RegistryAuth) -> Client {
        if let Some(client) = self.kept_for(auth) {
            return client;
        }
        let config = self.config();
        let built = tokio::task::spawn_blocking(move || Client::new(config))
            .await
            .unwrap_or_else(|_| Client::new(self.config()));
        // A pull with the same credentials may have built one meanwhile: keep the first.
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, client)) = kept.iter().find(|(kept_auth, _)| kept_auth == auth) {
            return client.clone();
        }
        kept.push((auth.clone(), built.clone()));
        if kept.len() > KEPT_CLIENTS {
            kept.remove(0);
        }
        built
    }

    /// The kept client for `auth`, now the most recently used.
    fn kept_for(&self, auth: &RegistryAuth) -> Option<Client> {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let index = kept.iter().position(|(kept_auth, _)| kept_auth == auth)?;
        let entry = kept.remove(index);
        let client = entry.1.clone();
        kept.push(entry);
        Some(client)
    }

    fn config(&self) -> ClientConfig {
        ClientConfig {
            protocol: ClientProtocol::HttpsExcept(self.plain_http.clone()),
            max_concurrent_download: self.max_concurrent_downloads,
            connect_timeout: Some(CONNECT_TIMEOUT),
            ..Default::default()
        }
    }

    #[cfg(test)]
    fn kept(&self) -> usize {
        self.kept.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str) -> RegistryAuth {
        RegistryAuth::Basic(user.into(), "secret".into())
    }

    #[tokio::test]
    async fn the_same_credentials_share_a_client_and_others_get_their_own() {
        let clients = Clients::new(Vec::new(), 3);
        clients.for_auth(&RegistryAuth::Anonymous).await;
        clients.for_auth(&RegistryAuth::Anonymous).await;
        assert_eq!(clients.kept(), 1);
        clients.for_auth(&basic("a")).await;
        clients.for_auth(&basic("b")).await;
        clients.for_auth(&RegistryAuth::Bearer("t".into())).await;
        assert_eq!(clients.kept(), 4);
    }

    #[tokio::test]
    async fn the_least_recently_used_credentials_lose_their_client() {
        let clients = Clients::new(Vec::new(), 3);
        for n in 0..KEPT_CLIENTS {
            clients.for_auth(&basic(&n.to_string())).await;
        }
        // Used again, so the oldest is now "1".
        clients.for_auth(&basic("0")).await;
        clients.for_auth(&basic("new")).await;
        assert_eq!(clients.kept(), KEPT_CLIENTS);
        let kept = clients.kept.lock().unwrap();
        let users: Vec<&str> = kept
            .iter()
            .filter_map(|(auth, _)| match auth {
                RegistryAuth::Basic(user, _) => Some(user.as_str()),
                _ => None,
            })
            .collect();
        assert!(users.contains(&"0"));
        assert!(!users.contains(&"1"));
        assert_eq!(users.last(), Some(&"new"));
    }
}
