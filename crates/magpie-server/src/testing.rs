//! An in-process server for integration tests: temp data dir, free port, cheap Argon2.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::{Config, Server};

/// A server running inside the test's tokio runtime.
pub struct TestServer {
    /// The running server; `None` only transiently during `stop`.
    server: Server,
    /// Keeps an owned temp dir alive for the server's lifetime.
    _dir: Option<tempfile::TempDir>,
    /// Where the data lives (for restarts on the same dir).
    data_dir: PathBuf,
    /// The configuration it runs with, reused by [`TestServer::restart`].
    config: Config,
}

impl TestServer {
    /// A fresh server on a free port with its own temp dir.
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Like [`TestServer::start`], with a hook to adjust the configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().to_path_buf();
        let mut config = Config::for_tests(free_addr(), data_dir.clone());
        adjust(&mut config);
        let server = Server::start(config.clone()).await.expect("server starts");
        TestServer {
            server,
            _dir: Some(dir),
            data_dir,
            config,
        }
    }

    /// A server on an existing data dir (a restart); `addr` may reuse the old port.
    pub async fn start_on(data_dir: &Path, addr: SocketAddr) -> TestServer {
        let config = Config::for_tests(addr, data_dir.to_path_buf());
        let server = Server::start(config.clone()).await.expect("server starts");
        TestServer {
            server,
            _dir: None,
            data_dir: data_dir.to_path_buf(),
            config,
        }
    }

    /// Stops and restarts on the same dir, port and configuration, keeping the temp dir alive.
    pub async fn restart(self) -> TestServer {
        let mut config = self.config.clone();
        config.listen = self.addr();
        let dir = self._dir;
        let data_dir = self.data_dir.clone();
        self.server.stop().await.expect("server stops");
        let server = Server::start(config.clone())
            .await
            .expect("server restarts");
        TestServer {
            server,
            _dir: dir,
            data_dir,
            config,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The server itself (its store, for failure injection).
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// `ws://127.0.0.1:PORT/v1/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}{}", self.addr(), magpie_protocol::WS_PATH)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Stops the server (data dir removed if owned).
    pub async fn stop(self) {
        self.server.stop().await.expect("server stops");
    }
}

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}
