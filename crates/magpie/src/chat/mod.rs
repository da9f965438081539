//! `magpie chat`: a terminal chat client built on `magpie-sdk`.
//!
//! Reads lines from stdin and sends them to the current direct conversation; prints incoming
//! messages, send confirmations and connection changes to stdout. The login (token + device)
//! and the inbox cursor live in a state directory, so a restart resumes where it stopped.

mod state;
mod view;

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use magpie_sdk::{
    Client, ConversationId, ErrorCode, EventBody, HistoryRange, SdkError, Session, SessionConfig,
    SessionEvent, UserId,
};
use tokio::sync::mpsc;

use state::{SavedLogin, StateDir};
use view::{message_line, Names, OwnSends};

/// Lines buffered between the stdin thread and the chat loop.
const STDIN_LINES_BUFFER: usize = 64;
/// How long to wait for unanswered sends after stdin closes before giving up.
const DRAIN_TIMEOUT_MS: u64 = 10_000;
/// How often the drain condition is re-checked while waiting.
const DRAIN_POLL_MS: u64 = 50;
/// `/history` without a count shows this many messages.
const HISTORY_DEFAULT: u32 = 20;
/// The server's page maximum.
const HISTORY_MAX: u32 = 200;

/// Prints one line to stdout, ignoring a closed pipe (the reader left; nothing to tell).
macro_rules! say {
    ($($arg:tt)*) => {{
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, $($arg)*);
        let _ = out.flush();
    }};
}

/// Arguments of `magpie chat`.
#[derive(clap::Args)]
pub struct ChatArgs {
    /// Server base URL.
    #[arg(long, env = "MAGPIE_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Account name.
    #[arg(long, env = "MAGPIE_USER")]
    user: String,
    /// Password; only needed to register or when no saved login works.
    #[arg(long, env = "MAGPIE_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Create the account first (an existing account is fine).
    #[arg(long)]
    register: bool,
    /// Open the direct conversation with this user.
    #[arg(long)]
    to: Option<String>,
    /// Where the login and cursor are kept [default: ~/.magpie/<user>@<host:port>].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Device name shown for this login.
    #[arg(long, default_value = "magpie-cli")]
    device_name: String,
}

/// Runs the terminal client.
pub async fn run(args: ChatArgs) -> anyhow::Result<()> {
    let anon = Client::new(&args.server)?;
    let dir = match &args.state_dir {
        Some(dir) => dir.clone(),
        None => StateDir::default_path(&args.user, &host_port(&anon))?,
    };
    let state = StateDir::open(dir)?;
    if args.register {
        register(&anon, &args).await?;
    }
    let (client, login) = authenticate(&anon, &state, &args).await?;
    let me = login.user_id().context("saved login has no user id")?;
    let config = SessionConfig {
        label: args.user.clone(),
        ..SessionConfig::default()
    };
    let (session, events) = Session::start(client.clone(), Arc::new(state.cursor_store()), config)?;
    say!(
        "* {} on {} (state in {}); /help for commands",
        args.user,
        args.server,
        state.path().display()
    );
    let mut chat = Chat {
        client,
        session,
        state,
        me,
        names: Names::new(me, &args.user),
        own: OwnSends::default(),
        current: None,
        connected_before: false,
        online: false,
    };
    if let Some(peer) = &args.to {
        chat.switch_to(peer).await;
    }
    chat.run(events, spawn_stdin_reader()).await
}

/// `host:port` of the server, for the default state directory name.
fn host_port(client: &Client) -> String {
    let url = client.base_url();
    let host = url.host_str().unwrap_or("server");
    match url.port_or_known_default() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

fn password(args: &ChatArgs) -> anyhow::Result<&str> {
    args.password
        .as_deref()
        .context("a password is needed: pass --password or set MAGPIE_PASSWORD")
}

async fn register(anon: &Client, args: &ChatArgs) -> anyhow::Result<()> {
    match anon.register(&args.user, password(args)?).await {
        Ok(info) => say!(
            "* created account {} (user {})",
            info.username,
            info.user_id
        ),
        Err(e) if e.code() == Some(ErrorCode::UsernameTaken) => {}
        Err(e) => return Err(e).context("registering"),
    }
    Ok(())
}

/// Reuses the saved login if the server still accepts it, else logs in (and saves).
async fn authenticate(
    anon: &Client,
    state: &StateDir,
    args: &ChatArgs,
) -> anyhow::Result<(Client, SavedLogin)> {
    if let Some(saved) = state.load_login(&args.user) {
        let client = anon.with_token(saved.token.clone());
        let me = saved.user_id().context("saved login has no user id")?;
        match client.user(me).await {
            Ok(_) => return Ok((client, saved)),
            Err(e) if e.is_unauthorized() => say!("* saved login no longer valid; logging in"),
            Err(e) => {
                // Offline start: the session keeps retrying with the saved token.
                say!("! cannot check the saved login ({e}); continuing with it");
                return Ok((client, saved));
            }
        }
    }
    let created = anon
        .login(&args.user, password(args)?, Some(&args.device_name))
        .await
        .context("logging in")?;
    let saved = SavedLogin::new(&args.user, &created);
    state.save_login(&saved)?;
    Ok((anon.with_token(created.token), saved))
}

/// Reads stdin on a plain thread: a blocking read there does not hold up process exit the
/// way Tokio's stdin (a blocking-pool task) holds up runtime shutdown.
fn spawn_stdin_reader() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(STDIN_LINES_BUFFER);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match stdin.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.trim_end_matches(['\n', '\r']).to_owned();
                    if tx.blocking_send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

/// The conversation typed lines go to.
struct Current {
    /// The peer's username.
    peer: String,
    /// The direct conversation with the peer.
    conversation_id: ConversationId,
}

/// Whether the loop goes on.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// The running client.
struct Chat {
    /// Authenticated HTTP client (names, history, conversations, logout).
    client: Client,
    /// The real-time session.
    session: Session,
    /// Saved login and cursor.
    state: StateDir,
    /// The local user.
    me: UserId,
    /// Username cache.
    names: Names,
    /// Ids sent from this terminal (their inbox copies are not echoed).
    own: OwnSends,
    /// Where typed lines go.
    current: Option<Current>,
    /// Distinguishes "connected" from "reconnected".
    connected_before: bool,
    /// Whether the last state change was a connect (the next drop is news, retries are not).
    online: bool,
}

impl Chat {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<SessionEvent>,
        mut lines: mpsc::Receiver<String>,
    ) -> anyhow::Result<()> {
        let mut stdin_open = true;
        let mut drain_until = None;
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(SessionEvent::Revoked) => {
                        // Expected when logged out elsewhere: say so and exit normally.
                        say!("* session revoked; run again to log in");
                        self.state.forget_login();
                        break;
                    }
                    Some(event) => self.on_event(event).await,
                    None => break,
                },
                line = lines.recv(), if stdin_open => match line {
                    Some(line) => {
                        if self.on_line(&line).await == Flow::Stop {
                            break;
                        }
                    }
                    None => {
                        // Input ended (e.g. a pipe): finish the sends in flight, then leave.
                        stdin_open = false;
                        drain_until = Some(tokio::time::Instant::now() + Duration::from_millis(DRAIN_TIMEOUT_MS));
                    }
                },
                _ = tokio::time::sleep(Duration::from_millis(DRAIN_POLL_MS)), if drain_until.is_some() => {}
            }
            if let Some(deadline) = drain_until {
                let pending = self.session.pending_sends();
                if pending == 0 {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    say!("! giving up on {pending} unsent message(s)");
                    break;
                }
            }
        }
        self.session.close().await;
        Ok(())
    }

    async fn on_event(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::Connected { device_id, .. } => {
                if self.connected_before {
                    say!("* reconnected");
                } else {
                    say!("* connected (device {device_id})");
                }
                self.connected_before = true;
                self.online = true;
            }
            SessionEvent::Disconnected { reason, retry_in } => {
                let secs = retry_in.as_secs_f64();
                if std::mem::take(&mut self.online) {
                    say!("* disconnected ({reason}); reconnecting in {secs:.1}s");
                } else {
                    say!("* reconnecting in {secs:.1}s ({reason})");
                }
            }
            SessionEvent::Event(event) => match event.body {
                EventBody::Message { message } => {
                    let own = message.sender_id == self.me;
                    if own && self.own.contains(&message.client_msg_id) {
                        return; // Typed here; the "(sent #n)" line already confirmed it.
                    }
                    let sender = self.names.name(&self.client, message.sender_id).await;
                    say!("{}", message_line(&message, &sender, own));
                }
            },
            SessionEvent::Sent { seq, duplicate, .. } => {
                if duplicate {
                    say!("(sent #{seq}, already stored)");
                } else {
                    say!("(sent #{seq})");
                }
            }
            SessionEvent::SendFailed { code, message, .. } => {
                say!("! not sent ({}): {message}", code.as_str());
            }
            SessionEvent::Revoked => {}
        }
    }

    async fn on_line(&mut self, line: &str) -> Flow {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            return Flow::Continue;
        }
        // "//text" sends "/text"; any other leading '/' is a command.
        if let Some(text) = line.strip_prefix("//") {
            self.send(&format!("/{text}"));
            return Flow::Continue;
        }
        let Some(command) = trimmed.strip_prefix('/') else {
            self.send(line);
            return Flow::Continue;
        };
        let mut words = command.split_whitespace();
        match (words.next().unwrap_or(""), words.next()) {
            ("quit" | "exit", _) => return Flow::Stop,
            ("logout", _) => {
                match self.client.logout().await {
                    Ok(()) => say!("* logged out"),
                    Err(e) => say!("! logout failed: {e}"),
                }
                self.state.forget_login();
                return Flow::Stop;
            }
            ("to", Some(name)) => self.switch_to(name).await,
            ("history", count) => self.history(count).await,
            _ => say!("* commands: /to NAME, /history [N], /logout, /quit; //text sends \"/text\""),
        }
        Flow::Continue
    }

    fn send(&mut self, text: &str) {
        let Some(current) = &self.current else {
            say!("! no conversation yet: /to NAME");
            return;
        };
        match self.session.send(current.conversation_id, text) {
            Ok(id) => self.own.insert(id),
            Err(SdkError::OutboxFull) => {
                say!("! too many unsent messages; wait for the connection")
            }
            Err(e) => say!("! not sent: {e}"),
        }
    }

    async fn switch_to(&mut self, name: &str) {
        let peer = match self.client.user_by_name(name).await {
            Ok(peer) => peer,
            Err(e) if e.code() == Some(ErrorCode::NotFound) => {
                say!("! no user named {name}");
                return;
            }
            Err(e) => {
                say!("! cannot look up {name}: {e}");
                return;
            }
        };
        if peer.user_id == self.me {
            say!("! that is you; pick someone else");
            return;
        }
        match self.client.open_direct(peer.user_id).await {
            Ok(conv) => {
                self.names.remember(peer.user_id, &peer.username);
                say!("* talking to {}", peer.username);
                self.current = Some(Current {
                    peer: peer.username,
                    conversation_id: conv.conversation_id,
                });
            }
            Err(e) => say!("! cannot open a conversation with {name}: {e}"),
        }
    }

    async fn history(&mut self, count: Option<&str>) {
        let Some(current) = &self.current else {
            say!("! no conversation yet: /to NAME");
            return;
        };
        let count = match count.map(str::parse::<u32>) {
            None => HISTORY_DEFAULT,
            Some(Ok(n)) if (1..=HISTORY_MAX).contains(&n) => n,
            Some(_) => {
                say!("! /history takes a count from 1 to {HISTORY_MAX}");
                return;
            }
        };
        let (conversation_id, peer) = (current.conversation_id, current.peer.clone());
        match self
            .client
            .messages(conversation_id, HistoryRange::Latest, Some(count))
            .await
        {
            Ok(messages) if messages.is_empty() => say!("* no messages with {peer} yet"),
            Ok(messages) => {
                say!("* last {} message(s) with {peer}:", messages.len());
                for m in &messages {
                    let sender = self.names.name(&self.client, m.sender_id).await;
                    say!("{}", message_line(m, &sender, m.sender_id == self.me));
                }
            }
            Err(e) => say!("! cannot load history: {e}"),
        }
    }
}
