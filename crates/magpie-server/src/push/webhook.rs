//! The built-in webhook provider: POSTs the notification as JSON, signed with HMAC-SHA256.

use std::time::Duration;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{PushError, PushNotification, PushProvider};

/// Header carrying `sha256=<hex HMAC-SHA256 of "{timestamp}.{raw body}">` keyed with the
/// shared secret.
pub const SIGNATURE_HEADER: &str = "x-magpie-signature";
/// Header carrying the Unix time in milliseconds at which the request was signed. It is part
/// of what is signed, so a receiver that refuses old timestamps (we suggest 5 minutes) cannot
/// be made to accept a captured request replayed later.
pub const TIMESTAMP_HEADER: &str = "x-magpie-timestamp";
/// How long one webhook request may take.
const WEBHOOK_TIMEOUT_MS: u64 = 5_000;

/// POSTs notifications to a URL.
pub struct WebhookProvider {
    /// Reused connection pool.
    client: reqwest::Client,
    /// Where to POST.
    url: String,
    /// HMAC key shared with the receiver.
    secret: Vec<u8>,
}

impl WebhookProvider {
    /// A provider for `url` signing with `secret`.
    pub fn new(url: String, secret: String) -> Result<Self, PushError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(WEBHOOK_TIMEOUT_MS))
            .build()
            .map_err(|e| PushError::Permanent(e.to_string()))?;
        Ok(Self {
            client,
            url,
            secret: secret.into_bytes(),
        })
    }
}

/// `sha256=<hex>`: the signature of `"{timestamp_ms}.{body}"` under `secret`.
pub fn sign(secret: &[u8], timestamp_ms: u64, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(timestamp_ms.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Unix time in milliseconds (0 if the clock is before 1970).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[async_trait]
impl PushProvider for WebhookProvider {
    async fn deliver(&self, n: &PushNotification) -> Result<(), PushError> {
        let body = serde_json::to_vec(n).map_err(|e| PushError::Permanent(e.to_string()))?;
        // Signed per attempt: a retry carries a fresh timestamp.
        let timestamp_ms = now_ms();
        let signature = sign(&self.secret, timestamp_ms, &body);
        let response = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(TIMESTAMP_HEADER, timestamp_ms.to_string())
            .header(SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await
            .map_err(|e| PushError::Transient(e.to_string()))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else if status.is_server_error() || status.as_u16() == 429 {
            Err(PushError::Transient(format!("webhook answered {status}")))
        } else {
            Err(PushError::Permanent(format!("webhook answered {status}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_rfc4231_case_2() {
        // The signed input is "{timestamp}.{body}"; checked against HMAC over that string,
        // and the HMAC primitive against RFC 4231 test case 2 (key "Jefe").
        let sig = sign(b"Jefe", 42, b"what do ya want for nothing?");
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"42.what do ya want for nothing?");
        assert_eq!(
            sig,
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        );
        // And the primitive itself against the RFC's vector.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_timestamp_is_part_of_the_signature() {
        let body = br#"{"seq":1}"#;
        assert_ne!(sign(b"k", 1, body), sign(b"k", 2, body));
        assert_eq!(sign(b"k", 7, body), sign(b"k", 7, body));
    }
}
