//! The HTTP/1 accept loop: what `axum::serve` does, plus the bounds it does not let us set.
//!
//! `axum::serve` builds hyper's connections without a timer, and hyper then silently drops
//! its 30 s header read timeout: a client could open a connection and send a header byte a
//! minute, forever, each holding a connection and its buffers (slowloris). Here every
//! connection must deliver a request's headers within [`HTTP_HEADER_READ_MS`] (and
//! `http::ApiJson` bounds the time a body may take). There is no cap on connections beyond
//! the open-files limit: a cap shared by all clients would let one client fill it and lock
//! everyone else out.

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::state::tokio_util_shim::CancelToken;

/// Longest a client may take to send one request's headers, from the connection's start or
/// the end of its previous response.
pub const HTTP_HEADER_READ_MS: u64 = 30_000;
/// Pause after an `accept` that failed for the listener's own reasons (out of file
/// descriptors, say), so the loop neither spins nor logs more than once a second.
const ACCEPT_RETRY_MS: u64 = 1_000;

/// Serves `app` on `listener` until `shutdown` fires; then stops accepting, lets every
/// connection finish the request it is serving, and returns once all have closed. Dropping
/// (aborting) the returned future drops every connection. Headers must arrive within
/// `header_read` ([`HTTP_HEADER_READ_MS`] outside tests).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancelToken,
    header_read: Duration,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read);
    let mut connections = JoinSet::new();
    loop {
        // Reap finished connections, so the set holds live ones only.
        while connections.try_join_next().is_some() {}
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                // The peer gave up before we took the connection: nothing is wrong here.
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        // Nagle's algorithm would hold small frames (acks, events) back for up to a
        // delayed-ACK period; a chat server wants every frame on the wire at once.
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let conn = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = shutdown.cancelled() => {
                    // Finish the request in progress (if any), then close.
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    // Refuse new connections at once while the others drain: a client reconnecting now
    // should hear "refused" and back off, not wait in the backlog until the process exits.
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// Errors of one incoming connection, not of the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset, Interrupted};
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset | Interrupted
    )
}
