//! The WebSocket gateway (`GET /v1/ws`): authentication at the upgrade and socket limits.
//! The per-connection protocol lives in [`conn`].

mod conn;
pub(crate) mod ratelimit;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{State, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use magpie_protocol::ErrorCode;

use crate::auth::{authenticate, Auth};
use crate::error::ApiError;
use crate::state::AppState;

/// Typing frames a user may relay per second, over all of the user's sockets (and its burst).
pub const TYPING_PER_SEC: u32 = 5;
/// See [`TYPING_PER_SEC`].
pub const TYPING_BURST: u32 = 10;

/// Largest inbound frame: a 100,000-character message even if every character arrives as a
/// six-byte `\uXXXX` escape, plus the JSON envelope.
pub const FRAME_BYTES_MAX: usize = 100_000 * 6 + 4096;
/// Socket read buffer. tungstenite's default (128 KiB) would cost ~136 KiB per idle socket;
/// the buffer grows on demand for the rare large frame.
pub const WS_READ_BUFFER_BYTES: usize = 2 * 1024;
/// Bytes of outbound frames collected before a write syscall; `flush` always writes at once.
pub const WS_WRITE_BUFFER_BYTES: usize = 16 * 1024;
/// Backpressure bound on buffered outbound bytes (room for one maximal frame and then some).
pub const WS_WRITE_BUFFER_BYTES_MAX: usize = 4 * FRAME_BYTES_MAX;

/// `GET /v1/ws`: refuses bad or revoked tokens with 401 before upgrading.
pub async fn upgrade(
    State(state): State<AppState>,
    auth: Auth,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // A request that is not a WebSocket handshake gets the v1 error body, keeping the status
    // axum chose (400, or 426 Upgrade Required for a version other than 13).
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            let status = e.status();
            let mut response =
                ApiError::new(ErrorCode::InvalidRequest, e.body_text()).into_response();
            *response.status_mut() = status;
            return response;
        }
    };
    // One pointer captured instead of the state and the device: axum's upgrade task keeps the
    // closure's captures for as long as the connection lives.
    let captured = Box::new((state, auth.device));
    ws.read_buffer_size(WS_READ_BUFFER_BYTES)
        .write_buffer_size(WS_WRITE_BUFFER_BYTES)
        .max_write_buffer_size(WS_WRITE_BUFFER_BYTES_MAX)
        .max_message_size(FRAME_BYTES_MAX)
        .max_frame_size(FRAME_BYTES_MAX)
        .on_upgrade(move |socket| {
            let (state, device) = *captured;
            conn::run(state, device, socket)
        })
}

/// Token check shared with tests that exercise the upgrade path directly.
pub async fn check_token(state: &AppState, token: &str) -> Result<(), ApiError> {
    authenticate(state, token).await.map(|_| ())
}
