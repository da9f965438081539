//! `magpie chat`: a terminal chat client built on `magpie-sdk`.
//!
//! Reads lines from stdin and sends them to the current conversation (a friend or a group);
//! prints incoming messages (from every conversation, in order), system messages, friend
//! requests, send confirmations and connection changes to stdout. Slash commands manage
//! friends and groups (`/help`). The login (token + device), the inbox cursor and the
//! per-conversation positions live in a state directory, so a restart resumes where it stopped.

mod state;
mod view;

use std::collections::HashMap;
use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use magpie_sdk::{
    Client, ConversationId, ConversationRow, ErrorCode, EventBody, HistoryRange, RequestId,
    SdkError, Session, SessionConfig, SessionEvent, UserId, UserInfo, WireMessage, WireSystem,
};
use tokio::sync::mpsc;

use state::{SavedLogin, StateDir};
use view::{clock, message_line, system_text, system_user_ids, Labels, Names, OwnSends};

/// Lines buffered between the stdin thread and the chat loop.
const STDIN_LINES_BUFFER: usize = 64;
/// Longest input line kept, in bytes: the longest message (`MESSAGE_CHARS_MAX` characters of
/// up to 4 bytes each) and its line ending. Longer lines are skipped, not buffered.
const STDIN_LINE_BYTES_MAX: usize = 4 * magpie_core::limits::MESSAGE_CHARS_MAX + 2;
/// How long to wait for unanswered sends after stdin closes before giving up.
const DRAIN_TIMEOUT_MS: u64 = 10_000;
/// How often the drain condition is re-checked while waiting.
const DRAIN_POLL_MS: u64 = 50;
/// After the last send is acknowledged, events are still shown until none arrives for this long.
const DRAIN_QUIET_MS: u64 = 200;
/// `/history` without a count shows this many messages.
const HISTORY_DEFAULT: u32 = 20;
/// The server's page maximum.
const HISTORY_MAX: u32 = 200;
/// Conversations remembered for `/read` (the last seq shown in each).
const LAST_SEEN_MAX: usize = 4_096;
/// Pending outgoing friend requests whose acceptance switches the chat to the new friend.
const AWAITING_MAX: usize = 16;
/// Rows `/convs` prints.
const CONVERSATIONS_SHOWN_MAX: usize = 50;

/// Prints one line to stdout, ignoring a closed pipe (the reader left; nothing to tell).
macro_rules! say {
    ($($arg:tt)*) => {{
        let text = format!($($arg)*);
        let line = crate::chat::view::printable(&text);
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
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
    /// Open the direct conversation with this user (sending a friend request first if needed).
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
    let (client, login, reachable) = authenticate(&anon, &state, &args).await?;
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
        labels: Labels::default(),
        own: OwnSends::default(),
        current: None,
        awaiting: Vec::new(),
        last_seen: HashMap::new(),
        connected_before: false,
        online: false,
        pending: None,
    };
    // Where to start: the conversation asked for, else the one the last run ended in. If
    // the server cannot be reached yet, that waits until the session connects.
    let start = match (&args.to, chat.state.load_current()) {
        (Some(peer), _) => Some(Pending::To(peer.clone())),
        (None, Some(last)) => Some(Pending::Switch(last.to_string())),
        (None, None) => None,
    };
    if reachable {
        if let Some(start) = start {
            chat.enter(start).await;
        }
    } else {
        chat.pending = start;
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

/// Reuses the saved login if the server still accepts it, else logs in (and saves). The
/// flag says whether the server answered (false: an offline start with a saved login).
async fn authenticate(
    anon: &Client,
    state: &StateDir,
    args: &ChatArgs,
) -> anyhow::Result<(Client, SavedLogin, bool)> {
    if let Some(saved) = state.load_login(&args.user) {
        let client = anon.with_token(saved.token.clone());
        let me = saved.user_id().context("saved login has no user id")?;
        match client.user(me).await {
            Ok(_) => return Ok((client, saved, true)),
            Err(e) if e.is_unauthorized() => say!("* saved login no longer valid; logging in"),
            Err(e) => {
                // Offline start: the session keeps retrying with the saved token.
                say!("! cannot check the saved login ({e}); continuing with it");
                return Ok((client, saved, false));
            }
        }
    }
    let created = anon
        .login(&args.user, password(args)?, Some(&args.device_name))
        .await
        .context("logging in")?;
    let saved = SavedLogin::new(&args.user, &created);
    state.save_login(&saved)?;
    Ok((anon.with_token(created.token), saved, true))
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
            let read = (&mut stdin)
                .take(STDIN_LINE_BYTES_MAX as u64 + 1)
                .read_until(b'\n', &mut buf);
            match read {
                Ok(0) | Err(_) => break,
                Ok(_) if buf.len() > STDIN_LINE_BYTES_MAX && buf.last() != Some(&b'\n') => {
                    let more = skip_line(&mut stdin);
                    say!(
                        "* line too long (over {STDIN_LINE_BYTES_MAX} bytes; a message holds at most {} characters): not sent",
                        magpie_core::limits::MESSAGE_CHARS_MAX
                    );
                    if !more {
                        break;
                    }
                }
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

/// Discards input up to and including the next newline, a buffer at a time; false at the end
/// of the input.
fn skip_line(input: &mut impl BufRead) -> bool {
    loop {
        let (found, used) = match input.fill_buf() {
            Ok([]) | Err(_) => return false,
            Ok(chunk) => match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (true, i + 1),
                None => (false, chunk.len()),
            },
        };
        input.consume(used);
        if found {
            return true;
        }
    }
}

/// A start-up switch to try again once the session connects.
enum Pending {
    /// `--to NAME`.
    To(String),
    /// The conversation the last run ended in.
    Switch(String),
}

/// The conversation typed lines go to.
struct Current {
    /// The conversation.
    conversation_id: ConversationId,
    /// The peer's username (direct) or the group's name.
    label: String,
    /// Whether it is a group (`/invite`, `/kick`, `/leave` apply).
    group: bool,
}

/// Whether the loop goes on.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// The running client.
struct Chat {
    /// Authenticated HTTP client (names, history, friends, groups, logout).
    client: Client,
    /// The real-time session.
    session: Session,
    /// Saved login and cursor.
    state: StateDir,
    /// The local user.
    me: UserId,
    /// Username cache.
    names: Names,
    /// Conversation labels (group names, peers' usernames).
    labels: Labels,
    /// Ids sent from this terminal (their copies in the stream are not echoed).
    own: OwnSends,
    /// Where typed lines go.
    current: Option<Current>,
    /// Users a friend request was sent to from here; when one accepts, the chat switches to
    /// them (bounded: a handful of names typed by a person).
    awaiting: Vec<UserId>,
    /// Highest seq shown per conversation (for `/read`); bounded by `LAST_SEEN_MAX`.
    last_seen: HashMap<ConversationId, u64>,
    /// Distinguishes "connected" from "reconnected".
    connected_before: bool,
    /// The conversation to enter once connected, when that failed at start (server down).
    pending: Option<Pending>,
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
                    // The outbox empties when an ack arrives, a moment before the session hands
                    // the matching `Sent` event over: show what is still in flight first.
                    while let Ok(Some(event)) =
                        tokio::time::timeout(Duration::from_millis(DRAIN_QUIET_MS), events.recv())
                            .await
                    {
                        self.on_event(event).await;
                    }
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    say!("! giving up on {pending} unsent message(s)");
                    break;
                }
            }
        }
        // Closing persists the cursor past every event the session handed over, printed or
        // not (`AckMode::Auto`): show the ones still queued first. (One that arrives between
        // the last look and the close is still lost to this terminal; a window of
        // microseconds instead of everything queued.)
        self.show_queued(&mut events).await;
        self.session.close().await;
        Ok(())
    }

    /// Prints the events already waiting in `events`, without waiting for more.
    async fn show_queued(&mut self, events: &mut mpsc::Receiver<SessionEvent>) {
        while let Ok(event) = events.try_recv() {
            self.on_event(event).await;
        }
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
                if let Some(start) = self.pending.take() {
                    self.enter(start).await;
                }
            }
            SessionEvent::Disconnected { reason, retry_in } => {
                let secs = retry_in.as_secs_f64();
                if std::mem::take(&mut self.online) {
                    say!("* disconnected ({reason}); reconnecting in {secs:.1}s");
                } else {
                    say!("* reconnecting in {secs:.1}s ({reason})");
                }
            }
            SessionEvent::Message(message) => self.on_message(message).await,
            SessionEvent::Event(event) => self.on_inbox_event(event.body).await,
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
            SessionEvent::Presence {
                user_id, online, ..
            } => {
                let name = self.names.name(&self.client, user_id).await;
                let state = if online { "online" } else { "offline" };
                say!("* {name} is {state}");
            }
            // Typing notices would interleave with what the user is typing; not shown.
            SessionEvent::Typing { .. } | SessionEvent::Revoked => {}
        }
    }

    async fn on_message(&mut self, m: WireMessage) {
        let conversation = m.conversation_id;
        if self.last_seen.len() >= LAST_SEEN_MAX && !self.last_seen.contains_key(&conversation) {
            self.last_seen.clear();
        }
        let seen = self.last_seen.entry(conversation).or_default();
        *seen = (*seen).max(m.seq);
        let is_current = self.current_id() == Some(conversation);
        if let Some(system) = &m.system {
            if let WireSystem::Renamed { name, .. } = system {
                self.labels.remember(conversation, name);
                if let Some(current) = self.current.as_mut().filter(|_| is_current) {
                    current.label = name.clone();
                }
            }
            let text = self.describe(system).await;
            if is_current {
                say!("* {text}");
            } else {
                let label = self.labels.label(&self.client, conversation).await;
                say!("* [{label}] {text}");
            }
        } else {
            let own = m.sender_id == self.me;
            if own && self.own.contains(&m.client_msg_id) {
                return; // Typed here; the "(sent #n)" line already confirmed it.
            }
            let sender = self.names.name(&self.client, m.sender_id).await;
            let group = self.labels.group_label(&self.client, conversation).await;
            let context = if is_current { None } else { group.as_deref() };
            say!("{}", message_line(&m, &sender, own, context));
        }
        if is_current {
            // Shown in the conversation the user is looking at: read.
            let _ = self.session.read(conversation, m.seq);
        }
    }

    /// A system message in words, with usernames.
    async fn describe(&mut self, system: &WireSystem) -> String {
        let mut known = HashMap::new();
        for id in system_user_ids(system) {
            if let Ok(user) = id.parse::<UserId>() {
                let name = self.names.name(&self.client, user).await;
                known.insert(id.to_owned(), name);
            }
        }
        system_text(system, |id| {
            known
                .get(id)
                .cloned()
                .unwrap_or_else(|| format!("user#{id}"))
        })
    }

    async fn on_inbox_event(&mut self, body: EventBody) {
        match body {
            EventBody::FriendRequest { request } => {
                if request.to_id != self.me {
                    return;
                }
                let name = self.names.name(&self.client, request.from_id).await;
                let note = if request.message.is_empty() {
                    String::new()
                } else {
                    format!(": \"{}\"", request.message)
                };
                say!("* friend request from {name}{note} (/accept {name} or /decline {name})");
            }
            EventBody::FriendAdded {
                user_id,
                conversation_id,
            } => {
                let name = self.names.name(&self.client, user_id).await;
                self.labels.remember(conversation_id, &name);
                let was_awaited = self.awaiting.contains(&user_id);
                self.awaiting.retain(|u| *u != user_id);
                if was_awaited {
                    say!("* {name} accepted your friend request");
                    self.set_current(Current {
                        conversation_id,
                        label: name.clone(),
                        group: false,
                    });
                    say!("* talking to {name}");
                } else if self.current_id() != Some(conversation_id) {
                    say!("* you and {name} are now friends (/to {name})");
                }
            }
            EventBody::GroupJoined { conversation_id } => {
                let label = self.labels.label(&self.client, conversation_id).await;
                say!("* you are in group {label} (#{conversation_id}); /switch {conversation_id}");
            }
            EventBody::GroupLeft { conversation_id } => {
                let label = self.labels.label(&self.client, conversation_id).await;
                say!("* you are no longer in group {label}");
                if self.current_id() == Some(conversation_id) {
                    self.current = None;
                }
            }
            // Read positions and receipts are not shown in a terminal.
            EventBody::Message { .. } | EventBody::Read { .. } | EventBody::Receipt { .. } => {}
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
        let verb = words.next().unwrap_or("");
        let arg = words.next();
        let rest = words.next();
        match (verb, arg, rest) {
            ("quit" | "exit", _, _) => return Flow::Stop,
            ("logout", _, _) => {
                match self.client.logout().await {
                    Ok(()) => say!("* logged out"),
                    Err(e) => say!("! logout failed: {e}"),
                }
                self.state.forget_login();
                return Flow::Stop;
            }
            ("to", Some(name), None) => self.switch_to(name).await,
            ("history", count, None) => self.history(count).await,
            ("friends", None, None) => self.friends().await,
            ("add", Some(name), None) => {
                if let Some(user) = self.lookup(name).await {
                    self.request_friend(&user).await;
                }
            }
            ("accept", Some(name), None) => self.answer(name, true).await,
            ("decline", Some(name), None) => self.answer(name, false).await,
            ("group", Some(name), Some(members)) => self.create_group(name, members).await,
            ("convs" | "join-list", None, None) => self.conversations().await,
            ("invite", Some(name), None) => self.invite(name).await,
            ("kick", Some(name), None) => self.kick(name).await,
            ("leave", None, None) => self.leave().await,
            ("read", None, None) => self.mark_read().await,
            ("switch", Some(target), None) => {
                self.switch(target).await;
            }
            // Our own text, several lines: printed as it is, not through `say!`'s sanitizer.
            _ => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{HELP}");
                let _ = out.flush();
            }
        }
        Flow::Continue
    }

    fn current_id(&self) -> Option<ConversationId> {
        self.current.as_ref().map(|c| c.conversation_id)
    }

    fn send(&mut self, text: &str) {
        let Some(current) = &self.current else {
            say!("! no conversation yet: /to NAME, /group NAME a,b or /switch");
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

    /// The user named `name`, or `None` after saying why not.
    async fn lookup(&mut self, name: &str) -> Option<UserInfo> {
        match self.client.user_by_name(name).await {
            Ok(user) => {
                self.names.remember(user.user_id, &user.username);
                Some(user)
            }
            Err(e) if e.code() == Some(ErrorCode::NotFound) => {
                say!("! no user named {name}");
                None
            }
            Err(e) => {
                say!("! cannot look up {name}: {e}");
                None
            }
        }
    }

    /// Opens the direct conversation with `name`; if they are not a friend yet, sends a friend
    /// request and switches once it is accepted.
    async fn switch_to(&mut self, name: &str) {
        let Some(peer) = self.lookup(name).await else {
            return;
        };
        if peer.user_id == self.me {
            say!("! that is you; pick someone else");
            return;
        }
        match self.client.open_direct(peer.user_id).await {
            Ok(conv) => {
                self.labels.remember(conv.conversation_id, &peer.username);
                say!("* talking to {}", peer.username);
                self.set_current(Current {
                    conversation_id: conv.conversation_id,
                    label: peer.username,
                    group: false,
                });
            }
            Err(e) if e.code() == Some(ErrorCode::NotFriends) => {
                // They may have asked first: then accepting is the way.
                if self.incoming_request_from(peer.user_id).await.is_some() {
                    say!(
                        "* {0} already sent you a friend request: /accept {0}",
                        peer.username
                    );
                    return;
                }
                self.request_friend(&peer).await;
            }
            Err(e) => say!("! cannot open a conversation with {name}: {e}"),
        }
    }

    async fn request_friend(&mut self, peer: &UserInfo) {
        match self.client.send_friend_request(peer.user_id, None).await {
            Ok(_) => {
                if !self.awaiting.contains(&peer.user_id) {
                    if self.awaiting.len() >= AWAITING_MAX {
                        self.awaiting.remove(0);
                    }
                    self.awaiting.push(peer.user_id);
                }
                say!(
                    "* friend request sent to {}; waiting for acceptance",
                    peer.username
                );
            }
            Err(e) if e.code() == Some(ErrorCode::AlreadyFriends) => {
                say!("* {0} is already a friend: /to {0}", peer.username)
            }
            Err(e) => say!("! cannot send a friend request to {}: {e}", peer.username),
        }
    }

    async fn incoming_request_from(&mut self, user: UserId) -> Option<RequestId> {
        match self.client.friend_requests().await {
            Ok(requests) => requests
                .incoming
                .iter()
                .find(|r| r.from_id == user)
                .map(|r| r.request_id),
            Err(e) => {
                say!("! cannot list friend requests: {e}");
                None
            }
        }
    }

    async fn answer(&mut self, name: &str, accept: bool) {
        let Some(peer) = self.lookup(name).await else {
            return;
        };
        let Some(request) = self.incoming_request_from(peer.user_id).await else {
            say!("! no friend request from {name}");
            return;
        };
        if !accept {
            match self.client.decline_friend_request(request).await {
                Ok(()) => say!("* declined {name}'s friend request"),
                Err(e) => say!("! cannot decline: {e}"),
            }
            return;
        }
        match self.client.accept_friend_request(request).await {
            Ok(conversation_id) => {
                self.labels.remember(conversation_id, &peer.username);
                say!("* you and {} are now friends", peer.username);
                say!("* talking to {}", peer.username);
                self.set_current(Current {
                    conversation_id,
                    label: peer.username,
                    group: false,
                });
            }
            Err(e) => say!("! cannot accept: {e}"),
        }
    }

    async fn friends(&mut self) {
        match self.client.friends().await {
            Ok(friends) if friends.is_empty() => say!("* no friends yet: /add NAME"),
            Ok(friends) => {
                say!("* friends:");
                for f in friends {
                    self.names.remember(f.user_id, &f.username);
                    let state = if f.online {
                        "online".to_owned()
                    } else if f.last_seen_ms > 0 {
                        format!("last seen {} UTC", clock(f.last_seen_ms))
                    } else {
                        "offline".to_owned()
                    };
                    say!("  {} ({state})", f.username);
                }
            }
            Err(e) => say!("! cannot list friends: {e}"),
        }
        match self.client.friend_requests().await {
            Ok(requests) => {
                for r in requests.incoming {
                    let name = self.names.name(&self.client, r.from_id).await;
                    say!("  {name} wants to be friends (/accept {name} or /decline {name})");
                }
                for r in requests.outgoing {
                    let name = self.names.name(&self.client, r.to_id).await;
                    say!("  {name} has not answered your request yet");
                }
            }
            Err(e) => say!("! cannot list friend requests: {e}"),
        }
    }

    async fn create_group(&mut self, name: &str, members: &str) {
        let mut ids = Vec::new();
        for member in members.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            match self.lookup(member).await {
                Some(user) => ids.push(user.user_id),
                None => return,
            }
        }
        match self.client.create_group(name, &ids).await {
            Ok(group) => {
                self.labels.remember(group.conversation_id, &group.name);
                self.labels.mark_group(group.conversation_id);
                say!(
                    "* created group {} (#{}, {} members); talking in {}",
                    group.name,
                    group.conversation_id,
                    group.member_count,
                    group.name
                );
                self.set_current(Current {
                    conversation_id: group.conversation_id,
                    label: group.name,
                    group: true,
                });
            }
            Err(e) => say!("! cannot create the group: {e}"),
        }
    }

    /// The current conversation if it is a group, else `None` after saying so.
    fn current_group(&self) -> Option<(ConversationId, String)> {
        match &self.current {
            Some(c) if c.group => Some((c.conversation_id, c.label.clone())),
            _ => {
                say!("! not in a group: /switch to one first");
                None
            }
        }
    }

    async fn invite(&mut self, name: &str) {
        let Some((group, label)) = self.current_group() else {
            return;
        };
        let Some(user) = self.lookup(name).await else {
            return;
        };
        match self.client.add_group_members(group, &[user.user_id]).await {
            // The "added" system message tells everyone, this terminal included.
            Ok(info) => say!("* {label} now has {} members", info.member_count),
            Err(e) => say!("! cannot invite {name}: {e}"),
        }
    }

    async fn kick(&mut self, name: &str) {
        let Some((group, _)) = self.current_group() else {
            return;
        };
        let Some(user) = self.lookup(name).await else {
            return;
        };
        if let Err(e) = self.client.remove_group_member(group, user.user_id).await {
            say!("! cannot remove {name}: {e}");
        }
    }

    async fn leave(&mut self) {
        let Some((group, label)) = self.current_group() else {
            return;
        };
        match self.client.remove_group_member(group, self.me).await {
            Ok(()) => {
                say!("* left {label}");
                self.current = None;
            }
            Err(e) => say!("! cannot leave {label}: {e}"),
        }
    }

    async fn mark_read(&mut self) {
        let Some(current) = &self.current else {
            say!("! no conversation yet");
            return;
        };
        let conversation = current.conversation_id;
        let seq = match self.last_seen.get(&conversation) {
            Some(&seq) => seq,
            // Nothing shown here yet (e.g. right after /switch): read up to the newest.
            None => match self.client.conversations().await {
                Ok(rows) => rows
                    .iter()
                    .find(|r| r.conversation_id == conversation)
                    .map_or(0, |r| r.last_seq),
                Err(e) => {
                    say!("! cannot mark read: {e}");
                    return;
                }
            },
        };
        match self.client.mark_read(conversation, seq).await {
            Ok(read) => say!("* read up to #{read}"),
            Err(e) => say!("! cannot mark read: {e}"),
        }
    }

    /// The conversation list with unread counts.
    async fn conversations(&mut self) {
        let rows = match self.client.conversations().await {
            Ok(rows) => rows,
            Err(e) => {
                say!("! cannot list conversations: {e}");
                return;
            }
        };
        if rows.is_empty() {
            say!("* no conversations yet");
            return;
        }
        say!("* conversations:");
        for row in rows.iter().take(CONVERSATIONS_SHOWN_MAX) {
            let label = self.row_label(row).await;
            let marker = if self.current_id() == Some(row.conversation_id) {
                "*"
            } else {
                " "
            };
            let what = if row.kind == "group" {
                format!("group, {} members", row.member_count)
            } else {
                "direct".to_owned()
            };
            let muted = if row.muted { ", muted" } else { "" };
            say!(
                "{marker} #{} {label} ({what}{muted}): {} unread",
                row.conversation_id,
                row.unread_count
            );
        }
        if rows.len() > CONVERSATIONS_SHOWN_MAX {
            say!("  … and {} more", rows.len() - CONVERSATIONS_SHOWN_MAX);
        }
    }

    /// A row's label: the group name, or the peer's username.
    async fn row_label(&mut self, row: &ConversationRow) -> String {
        let label = match row
            .peer_id
            .as_deref()
            .and_then(|p| p.parse::<UserId>().ok())
        {
            Some(peer) if row.kind != "group" => self.names.name(&self.client, peer).await,
            _ => row.name.clone(),
        };
        self.labels.remember(row.conversation_id, &label);
        if row.kind == "group" {
            self.labels.mark_group(row.conversation_id);
        }
        label
    }

    /// Enters the start-up conversation: `--to NAME`, or the one the last run ended in (which
    /// is forgotten if it is gone).
    async fn enter(&mut self, start: Pending) {
        match start {
            Pending::To(peer) => self.switch_to(&peer).await,
            Pending::Switch(target) => {
                if self.switch(&target).await == Some(false) {
                    self.state.forget_current();
                }
            }
        }
    }

    /// Enters `current`, and remembers it for the next start. A start-up switch still
    /// waiting for the connection is dropped: the user has chosen since.
    fn set_current(&mut self, current: Current) {
        self.pending = None;
        self.state.save_current(current.conversation_id);
        self.current = Some(current);
    }

    /// `/switch ID|NAME`: a conversation by id, group name or peer username. Whether it was
    /// found, or `None` if the conversations could not be listed.
    async fn switch(&mut self, target: &str) -> Option<bool> {
        let rows = match self.client.conversations().await {
            Ok(rows) => rows,
            Err(e) => {
                say!("! cannot list conversations: {e}");
                return None;
            }
        };
        let wanted = target.trim_start_matches('#');
        let mut found = None;
        for row in &rows {
            let label = self.row_label(row).await;
            if row.conversation_id.to_string() == wanted || label == target {
                found = Some((row.conversation_id, label, row.kind == "group"));
                break;
            }
        }
        match found {
            Some((conversation_id, label, group)) => {
                say!("* talking in {label}");
                self.set_current(Current {
                    conversation_id,
                    label,
                    group,
                });
                Some(true)
            }
            None => {
                say!("! no conversation {target}: /convs lists them");
                Some(false)
            }
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
        let (conversation_id, label) = (current.conversation_id, current.label.clone());
        let with = if current.group { "in" } else { "with" };
        match self
            .client
            .messages(conversation_id, HistoryRange::Latest, Some(count))
            .await
            .map(|page| page.messages)
        {
            Ok(messages) if messages.is_empty() => say!("* no messages {with} {label} yet"),
            Ok(messages) => {
                say!("* last {} message(s) {with} {label}:", messages.len());
                for m in &messages {
                    match &m.system {
                        Some(system) => {
                            let text = self.describe(system).await;
                            say!("* {text}");
                        }
                        None => {
                            let sender = self.names.name(&self.client, m.sender_id).await;
                            say!("{}", message_line(m, &sender, m.sender_id == self.me, None));
                        }
                    }
                }
            }
            Err(e) => say!("! cannot load history: {e}"),
        }
    }
}

/// What `/help` (or an unknown command) prints.
const HELP: &str = "\
* commands:
  /to NAME              chat with a friend (sends a friend request if needed)
  /add NAME             send a friend request
  /accept NAME          accept NAME's friend request (/decline NAME refuses it)
  /friends              friends, their presence and pending requests
  /group NAME a,b       create a group with users a and b and switch to it
  /invite NAME          add NAME to the current group (/kick NAME removes)
  /leave                leave the current group
  /convs                conversations with unread counts (also /join-list)
  /switch ID|NAME       switch to a conversation by id, group name or friend
  /read                 mark the current conversation read
  /history [N]          the last N messages here
  /logout               end this device's session (forget its login)
  /quit                 leave (the login is kept for next time)
  //text                send a line that starts with \"/\"";
