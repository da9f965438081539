//! Opening authenticated WebSocket connections, optionally from a chosen source address.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::wire::{self, Incoming};
use super::Target;

/// A client socket.
pub type Ws = WebSocketStream<TcpStream>;

/// How long the TCP connect, upgrade and `ready` may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest frame the bench accepts from the server.
const FRAME_BYTES_MAX: usize = 1 << 20;

/// Read buffer of a pipelining (throughput) client: its sockets always have data waiting, so
/// large reads mean fewer system calls.
pub const READ_BUFFER_BYTES_PIPELINED: usize = 32 * 1024;
/// Read buffer of a paced (latency) client. tungstenite zero-fills the whole free part of the
/// read buffer before every read attempt, including the many that find nothing, and with
/// 32 KiB that `memset` was 7% of the paced bench client's CPU time (`perf`, 61,401 msg/s over
/// 50 pairs); paced sockets hold a few hundred bytes at a time.
pub const READ_BUFFER_BYTES_PACED: usize = 4 * 1024;

/// Buffer sizes of a busy (throughput/latency) client: a read buffer of `read_buffer_bytes`,
/// and a write buffer large enough that `feed` never touches the socket; the bench flushes
/// explicitly.
pub fn busy_config(read_buffer_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer_bytes)
        .write_buffer_size(1024 * 1024)
        .max_message_size(Some(FRAME_BYTES_MAX))
        .max_frame_size(Some(FRAME_BYTES_MAX))
}

/// Buffer sizes of an idle client: keep the bench's own memory per socket small.
pub fn idle_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(FRAME_BYTES_MAX))
        .max_frame_size(Some(FRAME_BYTES_MAX))
}

/// An open, authenticated connection that has received `ready` (and usually sent `sync`).
pub struct Connected {
    /// The socket.
    pub ws: Ws,
    /// The cursor `sync` started from; the next event must carry `cursor + 1`.
    pub cursor: u64,
    /// The heartbeat interval the server announced.
    pub heartbeat_ms: u64,
}

/// Connects with `token` (from `source` if given), waits for `ready` and, if `sync`, sends
/// `sync` from the device's acknowledged cursor.
pub async fn connect(
    target: &Target,
    token: &str,
    source: Option<IpAddr>,
    config: WebSocketConfig,
    sync: bool,
) -> anyhow::Result<Connected> {
    tokio::time::timeout(
        CONNECT_TIMEOUT,
        connect_inner(target, token, source, config, sync),
    )
    .await
    .context("connecting timed out")?
}

async fn connect_inner(
    target: &Target,
    token: &str,
    source: Option<IpAddr>,
    config: WebSocketConfig,
    sync: bool,
) -> anyhow::Result<Connected> {
    let socket = match target.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("binding to {ip}"))?;
    }
    let stream = socket
        .connect(target.addr)
        .await
        .with_context(|| format!("connecting to {}", target.addr))?;
    stream.set_nodelay(true)?;
    let (mut ws, _response) =
        tokio_tungstenite::client_async_with_config(target.ws_url(token), stream, Some(config))
            .await
            .context("WebSocket upgrade")?;
    let first = ws
        .next()
        .await
        .context("closed before ready")?
        .context("reading ready")?;
    let Message::Text(text) = first else {
        anyhow::bail!("first frame is not text: {first:?}")
    };
    let Incoming::Ready {
        cursor,
        heartbeat_ms,
    } = wire::parse(text.as_str())?
    else {
        anyhow::bail!("first frame is not ready: {}", wire::clip(text.as_str()))
    };
    if sync {
        ws.send(Message::text(wire::sync_frame(cursor)))
            .await
            .context("sending sync")?;
    }
    Ok(Connected {
        ws,
        cursor,
        heartbeat_ms,
    })
}
