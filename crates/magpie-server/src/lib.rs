//! The Magpie server: HTTP API and WebSocket gateway over a [`magpie_store::Store`], with an
//! in-process [`hub::Hub`] routing committed events to connected devices.
//!
//! [`run`] is what `magpie serve` calls; [`Server`] is the embeddable form used by tests.

pub mod auth;
pub mod config;
pub mod error;
pub mod gate;
pub mod http;
pub mod hub;
pub mod metrics_setup;
pub mod presence;
pub mod push;
pub mod recent;
mod send;
pub mod serve;
mod social;
pub mod state;
pub mod testing;
pub mod web;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::routing::get;
use magpie_store::{FjallConfig, FjallStore, Store};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

pub use config::{Config, ServeArgs};
use hub::Hub;
use state::{AppState, ARGON2_CONCURRENCY_MAX, ARGON2_QUEUE_MAX};

/// Parses configuration, starts the server, and runs until SIGTERM or Ctrl-C.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::resolve(args)?;
    init_tracing(&config.log);
    raise_open_files_limit();
    let server = Server::start(config).await?;
    tracing::info!(addr = %server.addr(), "magpie listening");
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.stop().await
}

/// Lifts the soft open-files limit to the hard limit: every socket is a file, and the usual
/// soft default (1,024) would cap a chat server at about a thousand connections.
fn raise_open_files_limit() {
    #[cfg(unix)]
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::warn!("could not raise the open-files limit");
            }
        }
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            tracing::info!(open_files_max = lim.rlim_cur, "open-files limit");
        }
    }
}

/// The storage engine logs every journal and keyspace it opens or recovers at `info` (dozens
/// of lines before `listening`); those become `warn` unless the filter names the engine.
fn with_quiet_engine(filter: &str) -> String {
    if filter.contains("fjall") || filter.contains("lsm_tree") {
        filter.to_owned()
    } else {
        format!("{filter},fjall=warn,lsm_tree=warn")
    }
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(with_quiet_engine(filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(with_quiet_engine("info")));
    // A second call (tests) fails harmlessly.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// A running server.
pub struct Server {
    /// The bound address (useful when the configured port was 0).
    addr: SocketAddr,
    /// Shared state, kept to signal shutdown.
    state: AppState,
    /// The embedded store, closed last so every acknowledged write is on disk.
    store: Arc<FjallStore>,
    /// The accept loop.
    task: JoinHandle<()>,
    /// The notifier and presence announcer; aborted at stop.
    background: Vec<JoinHandle<()>>,
}

impl Server {
    /// Opens the store, binds the listener and starts serving in the background.
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        let _ = metrics_setup::handle();
        metrics_setup::register_at_start();
        let (announce_tx, announce_rx) = tokio::sync::mpsc::channel(presence::PRESENCE_QUEUE_MAX);
        let presence = presence::Presence::new(
            std::time::Duration::from_millis(config.presence_grace_ms),
            announce_tx,
        );
        let hub = Arc::new(Hub::new(presence));
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
        let mut store_config = FjallConfig::new(config.data_dir.join("store"));
        store_config.policy = config.policy;
        store_config.journal_bytes = u64::from(config.store_journal_mib) * 1024 * 1024;
        store_config.commit_interval_min =
            std::time::Duration::from_micros(u64::from(config.store_commit_interval_us));
        let sink: Arc<dyn magpie_store::CommitSink> = hub.clone();
        let store =
            Arc::new(FjallStore::open(store_config, sink).context("opening the embedded store")?);
        let dyn_store: Arc<dyn Store> = store.clone();
        if let Some(url) = &config.push_webhook_url {
            let provider = push::WebhookProvider::new(url.clone(), config.push_secret.clone())
                .map_err(|e| anyhow::anyhow!("push webhook: {e}"))?;
            let push_config = push::PushConfig {
                coalesce_ms: config.push_coalesce_ms,
                ..Default::default()
            };
            // Weak: the hub holds the queue, and the queue must not keep the hub alive.
            let hub_ref = Arc::downgrade(&hub);
            let online: push::IsOnline =
                Arc::new(move |user| hub_ref.upgrade().is_some_and(|h| h.is_online(user)));
            hub.set_push(push::PushQueue::start(
                Arc::new(provider),
                dyn_store.clone(),
                online,
                push_config,
            ));
        }
        let recent = Arc::new(recent::RecentMessages::default());
        hub.set_recent(recent.clone());
        let background = vec![
            tokio::spawn(hub.clone().run_notifier(dyn_store.clone(), recent.clone())),
            tokio::spawn(social::announce_presence(
                announce_rx,
                dyn_store.clone(),
                hub.clone(),
            )),
        ];
        let membership_epoch = hub.membership_epoch().clone();
        let listener = bind(config.listen).with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let send_limits = Arc::new(ws::ratelimit::SendLimits::new(
            config.send_rate_per_sec,
            config.send_burst,
        ));
        let state = AppState {
            config: Arc::new(config),
            store: dyn_store,
            hub,
            gate: Arc::new(gate::ConversationGate::new(
                gate::SENDS_IN_FLIGHT_PER_CONVERSATION_MAX,
            )),
            friend_epoch: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            membership_epoch,
            recent,
            argon2_permits: Arc::new(Semaphore::new(ARGON2_CONCURRENCY_MAX)),
            argon2_queue: Arc::new(Semaphore::new(ARGON2_QUEUE_MAX)),
            send_limits,
            typing_limits: Arc::new(ws::ratelimit::SendLimits::new(
                ws::TYPING_PER_SEC,
                ws::TYPING_BURST,
            )),
            shutdown: Default::default(),
            hot_metrics: Arc::new(metrics_setup::HotMetrics::resolve()),
        };
        let app = router(state.clone());
        let shutdown = state.shutdown.clone();
        let header_read = std::time::Duration::from_millis(state.config.http_header_read_ms);
        let task = tokio::spawn(serve::serve(listener, app, shutdown, header_read));
        Ok(Server {
            addr,
            state,
            store,
            task,
            background,
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Users with at least one socket open on this server.
    pub fn online_users(&self) -> usize {
        self.state.hub.online_users()
    }

    /// The embedded store, for programs that embed the server and for tests.
    pub fn store(&self) -> &Arc<FjallStore> {
        &self.store
    }

    /// Stops accepting, closes sockets, waits for in-flight requests, then closes the store.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.state.shutdown.cancel();
        // Graceful shutdown waits for every HTTP connection to finish its request, and a client
        // may never finish one (half a request, then silence): after the bound, drop them.
        let mut task = self.task;
        let wait = std::time::Duration::from_millis(SHUTDOWN_HTTP_WAIT_MS);
        let served = match tokio::time::timeout(wait, &mut task).await {
            Ok(served) => served,
            Err(_) => {
                // Aborting the accept loop drops every connection it still serves.
                tracing::warn!("HTTP connections still open at shutdown; closing them");
                task.abort();
                Ok(())
            }
        };
        // Connection tasks answer their in-flight batches before closing; give them a moment.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.state.hub.online_users() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        for task in &self.background {
            task.abort();
        }
        // Users still online, or in their grace period, have no recorded "last seen" yet.
        let seen = self.state.hub.presence().unrecorded();
        for chunk in seen.chunks(magpie_store::LAST_SEEN_PER_WRITE_MAX) {
            if let Err(e) = self.state.store.record_last_seen(chunk.to_vec()).await {
                tracing::warn!(error = %e, "recording last seen at shutdown failed");
            }
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.close()).await?;
        served?;
        Ok(())
    }
}

/// Longest wait at shutdown for HTTP requests in progress (long-polls end at once).
const SHUTDOWN_HTTP_WAIT_MS: u64 = 5_000;

/// Pending connections the kernel queues before `accept`; large enough that a reconnect storm
/// after a restart does not drop handshakes (tokio's default is 128).
const LISTEN_BACKLOG_CONNECTIONS: u32 = 4096;

/// Binds the listening socket with an explicit backlog.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG_CONNECTIONS)
}

/// The full route table.
pub fn router(state: AppState) -> axum::Router {
    http::routes()
        .merge(web::routes())
        .route(magpie_protocol::WS_PATH, get(ws::upgrade))
        .fallback(http::no_route)
        .method_not_allowed_fallback(http::wrong_method)
        .layer(axum::extract::DefaultBodyLimit::max(
            http::HTTP_BODY_BYTES_MAX,
        ))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::with_quiet_engine;

    #[test]
    fn the_engine_logs_warnings_only_unless_the_filter_names_it() {
        assert_eq!(with_quiet_engine("info"), "info,fjall=warn,lsm_tree=warn");
        assert_eq!(with_quiet_engine("debug,fjall=info"), "debug,fjall=info");
        assert!(tracing_subscriber::EnvFilter::try_new(with_quiet_engine("warn")).is_ok());
    }
}
