//! The web client's static assets, compiled into the binary and served at `/`.
//!
//! The client lives in `crates/magpie-server/web/`: `index.html` plus plain ES modules, CSS and
//! an icon under `app/`. Every file is embedded with `include_bytes!`, so neither building nor
//! running the server needs Node, and a release binary serves the client on its own.
//!
//! `GET /` answers `index.html`; `GET /app/{path}` answers the asset of that path. Every answer
//! carries a restrictive Content-Security-Policy (same origin only; the WebSocket to the same
//! host), `Cache-Control: no-cache` with a strong `ETag` (file names are not content-hashed, so
//! browsers revalidate and get `304 Not Modified` while nothing changed).

use std::collections::HashMap;
use std::sync::OnceLock;

use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

use crate::state::AppState;

/// URL prefix of every asset but `index.html`.
pub const ASSET_PREFIX: &str = "/app/";

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// One embedded file.
#[derive(Debug)]
pub struct Asset {
    /// Path relative to `web/` (`index.html`, `app/js/main.js`, ...).
    pub path: &'static str,
    /// The `Content-Type` it is served with.
    pub content_type: &'static str,
    /// The file's bytes.
    pub body: &'static [u8],
}

/// Embeds `web/$path` with its content type.
macro_rules! asset {
    ($path:literal, $ct:expr) => {
        Asset {
            path: $path,
            content_type: $ct,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/", $path)),
        }
    };
}

/// Every file of the client. `tests/web_assets.rs` checks that each file under `web/` is here.
pub static ASSETS: &[Asset] = &[
    asset!("index.html", HTML),
    asset!("app/style.css", CSS),
    asset!("app/icon.svg", SVG),
    asset!("app/js/main.js", JS),
    asset!("app/js/config.js", JS),
    asset!("app/js/api.js", JS),
    asset!("app/js/session.js", JS),
    asset!("app/js/socket.js", JS),
    asset!("app/js/client.js", JS),
    asset!("app/js/store/conversations.js", JS),
    asset!("app/js/store/emitter.js", JS),
    asset!("app/js/store/inbox.js", JS),
    asset!("app/js/store/tracker.js", JS),
    asset!("app/js/store/timeline.js", JS),
    asset!("app/js/store/outbox.js", JS),
    asset!("app/js/store/users.js", JS),
    asset!("app/js/ui/dom.js", JS),
    asset!("app/js/ui/toast.js", JS),
    asset!("app/js/ui/auth.js", JS),
    asset!("app/js/ui/shell.js", JS),
    asset!("app/js/ui/conversations.js", JS),
    asset!("app/js/ui/people.js", JS),
    asset!("app/js/ui/chat.js", JS),
    asset!("app/js/ui/messages.js", JS),
    asset!("app/js/ui/groups.js", JS),
];

/// The Content-Security-Policy of every answer: nothing but this origin, no inline code, no
/// framing. `'self'` in `connect-src` covers the same-origin `ws:`/`wss:` socket in current
/// browsers; the explicit `ws:`/`wss:` sources of the request's host cover older ones.
fn csp(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| is_plain_host(h));
    let sockets = match host {
        Some(h) => format!("ws://{h} wss://{h}"),
        None => "ws: wss:".to_owned(),
    };
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         font-src 'self'; connect-src 'self' {sockets}; manifest-src 'self'; base-uri 'none'; \
         form-action 'none'; frame-ancestors 'none'; object-src 'none'"
    )
}

/// Whether a `Host` header is a plain `name[:port]` or `[v6]:port` that is safe to echo into
/// the policy (no spaces, semicolons or quotes that could add directives).
fn is_plain_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b':' | b'-' | b'[' | b']'))
}

/// Strong ETags, computed once from the embedded bytes.
fn etags() -> &'static HashMap<&'static str, String> {
    static ETAGS: OnceLock<HashMap<&'static str, String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let digest = Sha256::digest(a.body);
                (a.path, format!("\"{}\"", hex::encode(&digest[..12])))
            })
            .collect()
    })
}

/// The embedded file at `path` (relative to `web/`).
pub fn find(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

/// Routes serving the web client.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/app/{*path}", get(app_asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn app_asset(path: Result<Path<String>, PathRejection>, headers: HeaderMap) -> Response {
    match path {
        Ok(Path(path)) => serve(&format!("app/{path}"), &headers),
        // Not UTF-8 once decoded: no asset has such a name.
        Err(_) => not_found(),
    }
}

/// 404 with the v1 error body, like any path no endpoint serves.
fn not_found() -> Response {
    crate::http::no_such_endpoint().into_response()
}

/// Answers one asset (or 404), with the security and caching headers.
fn serve(path: &str, headers: &HeaderMap) -> Response {
    let Some(asset) = find(path) else {
        return not_found();
    };
    let etag = etags().get(asset.path).cloned().unwrap_or_default();
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = asset.body.into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        r
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&csp(headers)) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_unique_and_typed() {
        let mut seen = std::collections::HashSet::new();
        for a in ASSETS {
            assert!(seen.insert(a.path), "{} listed twice", a.path);
            assert!(a.path == "index.html" || a.path.starts_with("app/"));
            assert!(!a.body.is_empty(), "{} is empty", a.path);
        }
    }

    #[test]
    fn hosts_with_directive_characters_are_not_echoed() {
        assert!(is_plain_host("127.0.0.1:8080"));
        assert!(is_plain_host("[::1]:8080"));
        assert!(!is_plain_host("evil; script-src *"));
        assert!(!is_plain_host("a'b"));
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("x y"));
        assert!(csp(&h).contains("connect-src 'self' ws: wss:"));
    }
}
