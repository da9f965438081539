//! Passwords (Argon2id on the blocking pool) and bearer tokens (256-bit random, stored as
//! SHA-256), plus the `Auth` extractor that turns a request into an authenticated device.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use magpie_core::{Device, DeviceId, UserId};
use magpie_protocol::ErrorCode;
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::error::ApiError;
use crate::state::AppState;

/// Bytes of randomness in a token (256 bits).
const TOKEN_BYTES: usize = 32;

/// Argon2id with the configured cost.
fn argon2(m_kib: u32, t: u32) -> Result<Argon2<'static>, ApiError> {
    let params = Params::new(m_kib, t, 1, None)
        .map_err(|e| ApiError::new(magpie_protocol::ErrorCode::Internal, e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes a password on the blocking pool (Argon2 costs milliseconds of CPU by design).
pub async fn hash_password(state: &AppState, password: String) -> Result<String, ApiError> {
    let (m, t) = (state.config.argon2_m_kib, state.config.argon2_t);
    let permits = enter_argon2(&state.argon2_queue, &state.argon2_permits).await?;
    tokio::task::spawn_blocking(move || {
        // Held by the hash itself: a client that hangs up drops the request, not the hash
        // already running, so the permits must stay taken until the hash ends.
        let _permits = permits;
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        let salt = SaltString::encode_b64(&salt).map_err(internal)?;
        let hash = argon2(m, t)?
            .hash_password(password.as_bytes(), &salt)
            .map_err(internal)?;
        Ok(hash.to_string())
    })
    .await
    .map_err(internal)?
}

/// Checks a password against a stored PHC string on the blocking pool. The parameters come
/// from the stored hash, so changing the configured cost does not lock anyone out.
pub async fn verify_password(
    state: &AppState,
    password: String,
    phc: String,
) -> Result<bool, ApiError> {
    let permits = enter_argon2(&state.argon2_queue, &state.argon2_permits).await?;
    tokio::task::spawn_blocking(move || {
        let _permits = permits; // See `hash_password`.
        let parsed = PasswordHash::new(&phc).map_err(internal)?;
        Ok(Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok())
    })
    .await
    .map_err(internal)?
}

/// A place in the Argon2 queue, then one of the running permits: `rate_limited` at once when
/// the queue is full, instead of waiting behind everyone.
async fn enter_argon2(
    queue: &Arc<Semaphore>,
    permits: &Arc<Semaphore>,
) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), ApiError> {
    let place = queue.clone().try_acquire_owned().map_err(|e| match e {
        TryAcquireError::NoPermits => ApiError::new(
            ErrorCode::RateLimited,
            "too many logins and registrations in progress; retry shortly",
        ),
        TryAcquireError::Closed => unavailable(),
    })?;
    let running = permits
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| unavailable())?;
    Ok((place, running))
}

/// A fresh random token (hex) and the SHA-256 that is stored in its place.
pub fn new_token() -> (String, [u8; 32]) {
    let mut raw = [0u8; TOKEN_BYTES];
    rand::rng().fill_bytes(&mut raw);
    let token = hex::encode(raw);
    let hash = token_hash(&token);
    (token, hash)
}

/// The stored form of a token.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(magpie_protocol::ErrorCode::Internal, e.to_string())
}

fn unavailable() -> ApiError {
    ApiError::new(
        magpie_protocol::ErrorCode::Unavailable,
        "server is shutting down",
    )
}

/// An authenticated request: the device whose token was presented.
#[derive(Debug, Clone)]
pub struct Auth {
    /// The device record at authentication time.
    pub device: Device,
}

impl Auth {
    /// The authenticated user.
    pub fn user_id(&self) -> UserId {
        self.device.user_id
    }

    /// The authenticated device.
    pub fn device_id(&self) -> DeviceId {
        self.device.id
    }
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// Finds the token in `Authorization: Bearer` or, for browsers' WebSockets, `?token=`.
fn bearer(parts: &Parts) -> Option<String> {
    if let Some(value) = parts.headers.get(axum::http::header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))?;
        return Some(token.trim().to_owned());
    }
    let Query(q) = Query::<TokenQuery>::try_from_uri(&parts.uri).ok()?;
    q.token
}

/// Resolves a token to its unrevoked device.
pub async fn authenticate(state: &AppState, token: &str) -> Result<Device, ApiError> {
    let unauthorized = || {
        ApiError::new(
            magpie_protocol::ErrorCode::Unauthorized,
            "missing or invalid token",
        )
    };
    // Tokens are 64 hex chars; anything else cannot match and is not worth hashing.
    if token.len() != TOKEN_BYTES * 2 {
        return Err(unauthorized());
    }
    let device = state.store.device_by_token(token_hash(token)).await?;
    device.filter(|d| !d.revoked).ok_or_else(unauthorized)
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).ok_or_else(|| {
            ApiError::new(
                magpie_protocol::ErrorCode::Unauthorized,
                "missing bearer token",
            )
        })?;
        let device = authenticate(state, &token).await?;
        Ok(Auth { device })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_argon2_queue_answers_rate_limited_at_once() {
        let queue = Arc::new(Semaphore::new(2));
        let permits = Arc::new(Semaphore::new(1));
        let running = enter_argon2(&queue, &permits).await.expect("first runs");
        // The second waits for the running permit, holding the last place in the queue.
        let waiting = tokio::spawn({
            let (queue, permits) = (queue.clone(), permits.clone());
            async move { enter_argon2(&queue, &permits).await.map(|_| ()) }
        });
        while queue.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        let refused = enter_argon2(&queue, &permits)
            .await
            .expect_err("queue full");
        assert_eq!(refused.code, ErrorCode::RateLimited);
        drop(running);
        assert!(waiting.await.expect("join").is_ok(), "the waiter runs next");
        assert!(enter_argon2(&queue, &permits).await.is_ok(), "room again");
    }
}
