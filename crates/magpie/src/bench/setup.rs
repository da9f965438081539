//! Setup over the HTTP API: accounts, logins and direct conversations, with bounded
//! concurrency so that the Argon2 hashing behind registration and login queues politely.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use futures_util::{StreamExt, TryStreamExt};
use magpie_core::{ConversationId, UserId};
use magpie_protocol::http::{
    ConversationInfo, Credentials, DirectRequest, SessionCreated, UserInfo,
};
use magpie_protocol::social::{FriendAccepted, FriendRequestCreate, FriendRequestCreated};
use rand::Rng;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{sys, Target};

/// Password of every bench user (the server's minimum is 8 characters).
const PASSWORD: &str = "bench-password-1";
/// Longest `--users-prefix`, leaving room for `_` and an index in a 32-character username.
const PREFIX_CHARS_MAX: usize = 20;
/// Timeout of one setup request; logins queue behind Argon2 on a busy server.
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

/// A logged-in bench user with one device.
#[derive(Clone, Debug)]
pub struct Account {
    /// The user.
    pub user_id: UserId,
    /// Bearer token of that device.
    pub token: String,
}

/// A tiny client for the setup calls.
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
    base: String,
}

impl Http {
    /// A client for `target`.
    pub fn new(target: &Target) -> anyhow::Result<Http> {
        let client = reqwest::Client::builder().timeout(HTTP_TIMEOUT).build()?;
        Ok(Http {
            client,
            base: target.base.clone(),
        })
    }

    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        token: Option<&str>,
        body: &B,
    ) -> anyhow::Result<R> {
        let mut req = self.client.post(format!("{}{path}", self.base)).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.with_context(|| format!("POST {path}"))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .with_context(|| format!("reading POST {path}"))?;
        if !status.is_success() {
            return Err(ApiFailure::new(format!("POST {path}"), status.as_u16(), &bytes).into());
        }
        serde_json::from_slice(&bytes).with_context(|| format!("decoding POST {path} response"))
    }

    /// Registers `username`.
    pub async fn register(&self, username: &str) -> anyhow::Result<UserId> {
        let body = Credentials {
            username: username.to_owned(),
            password: PASSWORD.to_owned(),
            device_name: None,
        };
        let info: UserInfo = self.post("/v1/accounts", None, &body).await?;
        Ok(info.user_id)
    }

    /// Logs `username` in as a new device.
    pub async fn login(&self, username: &str) -> anyhow::Result<Account> {
        let body = Credentials {
            username: username.to_owned(),
            password: PASSWORD.to_owned(),
            device_name: Some("magpie-bench".to_owned()),
        };
        let s: SessionCreated = self.post("/v1/sessions", None, &body).await?;
        Ok(Account {
            user_id: s.user_id,
            token: s.token,
        })
    }

    /// Opens (or finds) the direct conversation between the token's user and `peer`.
    pub async fn open_direct(&self, token: &str, peer: UserId) -> anyhow::Result<ConversationId> {
        let info: ConversationInfo = self
            .post(
                "/v1/conversations/direct",
                Some(token),
                &DirectRequest { peer_id: peer },
            )
            .await?;
        Ok(info.conversation_id)
    }

    /// Makes `a` and `b` friends (a asks, b accepts) and returns their direct conversation.
    pub async fn befriend(&self, a: &Account, b: &Account) -> anyhow::Result<ConversationId> {
        let ask = FriendRequestCreate {
            user_id: b.user_id,
            message: None,
        };
        let created: FriendRequestCreated = self
            .post("/v1/friends/requests", Some(&a.token), &ask)
            .await?;
        let path = format!("/v1/friends/requests/{}/accept", created.request_id);
        let accepted: FriendAccepted = self
            .post(&path, Some(&b.token), &serde_json::json!({}))
            .await?;
        Ok(accepted.conversation_id)
    }

    /// The direct conversation of `a` and `b`, befriending them first if the server requires
    /// friendship for direct conversations (it answers `not_friends` then).
    pub async fn direct_between(&self, a: &Account, b: &Account) -> anyhow::Result<ConversationId> {
        match self.open_direct(&a.token, b.user_id).await {
            Ok(id) => Ok(id),
            Err(e)
                if e.downcast_ref::<ApiFailure>()
                    .is_some_and(|f| f.code == "not_friends") =>
            {
                self.befriend(a, b).await
            }
            Err(e) => Err(e),
        }
    }

    /// Scrapes `GET /metrics`.
    pub async fn metrics(&self) -> anyhow::Result<sys::Metrics> {
        let resp = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .context("GET /metrics")?;
        anyhow::ensure!(
            resp.status().is_success(),
            "GET /metrics answered {}",
            resp.status()
        );
        Ok(sys::Metrics::parse(&resp.text().await?))
    }
}

/// A non-success HTTP answer, with the protocol's error code when the body carried one.
#[derive(Debug)]
pub struct ApiFailure {
    /// What was asked, e.g. `POST /v1/accounts`.
    what: String,
    /// HTTP status.
    status: u16,
    /// The `error.code` of the body (empty if there was none).
    code: String,
    /// The `error.message` of the body, or the raw body.
    message: String,
}

impl ApiFailure {
    fn new(what: String, status: u16, body: &[u8]) -> ApiFailure {
        // Read the body loosely, so codes newer than this build's protocol types still show.
        let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        let field = |name: &str| {
            parsed
                .as_ref()
                .and_then(|v| v["error"][name].as_str())
                .map(str::to_owned)
        };
        ApiFailure {
            what,
            status,
            code: field("code").unwrap_or_default(),
            message: field("message").unwrap_or_else(|| String::from_utf8_lossy(body).into_owned()),
        }
    }
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} answered {} {}: {}",
            self.what, self.status, self.code, self.message
        )
    }
}

impl std::error::Error for ApiFailure {}

/// The username prefix: the given one (checked) or a random one.
pub fn users_prefix(given: Option<&str>) -> anyhow::Result<String> {
    match given {
        Some(p) => {
            anyhow::ensure!(
                !p.is_empty()
                    && p.len() <= PREFIX_CHARS_MAX
                    && p.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "--users-prefix must be 1–{PREFIX_CHARS_MAX} characters of [a-z0-9_]"
            );
            Ok(p.to_owned())
        }
        None => {
            const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
            let mut rng = rand::rng();
            let tail: String = (0..7)
                .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
                .collect();
            Ok(format!("b{tail}"))
        }
    }
}

/// Runs `f(0..n)` with at most `concurrency` in flight; results in index order.
pub async fn bounded<T, F, Fut>(n: usize, concurrency: usize, f: F) -> anyhow::Result<Vec<T>>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    futures_util::stream::iter(0..n)
        .map(f)
        .buffered(concurrency.max(1))
        .try_collect()
        .await
}

/// Registers and logs in `n` users named `{prefix}_{i}`; one device each.
pub async fn accounts(
    http: &Http,
    prefix: &str,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<Account>> {
    bounded(n, concurrency, |i| {
        let http = http.clone();
        let name = format!("{prefix}_{i}");
        async move {
            let user_id = http.register(&name).await?;
            let account = http.login(&name).await?;
            anyhow::ensure!(
                account.user_id == user_id,
                "login of {name} returned another user id"
            );
            Ok(account)
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        let p = users_prefix(None).expect("random prefix");
        assert_eq!(p.len(), 8);
        assert!(users_prefix(Some("ok_1")).is_ok());
        assert!(users_prefix(Some("Bad")).is_err());
        assert!(users_prefix(Some("")).is_err());
        assert!(users_prefix(Some(&"a".repeat(21))).is_err());
    }
}
