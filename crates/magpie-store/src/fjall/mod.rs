//! The embedded backend: fjall (an LSM-tree) with one writer thread staging batches and a
//! commit thread applying and fsyncing them (group commit).
//!
//! # On-disk layout
//!
//! One fjall database with one keyspace per record kind; integers in keys are big-endian u64 so
//! byte order equals numeric order (see [`keys`] for the exact keys, [`codec`] for values):
//!
//! | keyspace          | key                           | value                                |
//! |-------------------|-------------------------------|--------------------------------------|
//! | `meta`            | `schema_version`, `next_*_id` | u64                                  |
//! | `users`           | user_id                       | user record                          |
//! | `usernames`       | username bytes                | user_id                              |
//! | `devices`         | device_id                     | device record                        |
//! | `tokens`          | token_hash (32 bytes)         | unrevoked holders' device_ids        |
//! | `convs`           | conv_id                       | conversation record (+ direct pair)  |
//! | `directs`         | min_user ‖ max_user           | conv_id                              |
//! | `messages`        | conv_id ‖ seq                 | sender, ts, client id, text, system  |
//! | `dedup`           | sender_id ‖ client_msg_id     | conv_id ‖ seq                        |
//! | `inbox`           | user_id ‖ cursor              | event: message ref or inline payload |
//! | `members`         | conv_id ‖ user_id             | role, joined_seq, read_seq, muted    |
//! | `user_convs`      | user_id ‖ conv_id             | (empty)                              |
//! | `friends`         | user_id ‖ friend_id           | conv_id ‖ since_ms                   |
//! | `friend_requests` | request_id                    | pending request record               |
//! | `requests_in`     | to ‖ request_id               | (empty)                              |
//! | `requests_out`    | from ‖ request_id             | (empty)                              |
//! | `requests_pair`   | from ‖ to                     | request_id                           |
//!
//! # Fan-out
//!
//! A message of a direct conversation or of a group with at most `policy.fanout_write_max`
//! members gets one `inbox` row per member (write fan-out). A larger group's message writes
//! only the message and its dedup key (read fan-out); the sink gets a `ConversationNotice`
//! with the member list, which the writer keeps cached, instead.
//!
//! # Concurrency
//!
//! All mutations go through a bounded queue to the single "magpie-writer" thread (see
//! [`writer`]), which stages them in batches and hands each to the "magpie-commit" thread (see
//! [`commit`]), which commits it with one fsync per batch (or per group of queued batches).
//! Reads run on tokio's blocking pool against `Shared::durable`, a snapshot the commit thread
//! replaces after every fsync, so a read never sees data that a crash could still take back.

mod codec;
mod commit;
mod keys;
mod read;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use fjall::{Database, PersistMode, Snapshot};
use magpie_core::{
    ClientMsgId, Conversation, ConversationId, Cursor, Device, DeviceId, Event, FriendRequest,
    Member, Message, RequestId, Role, Seq, User, UserId,
};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, oneshot};

use crate::fjall::keys::{
    be_u64, Keyspaces, Ks, META_NEXT_CONVERSATION_ID, META_NEXT_DEVICE_ID, META_NEXT_REQUEST_ID,
    META_NEXT_USER_ID, META_SCHEMA_VERSION,
};
use crate::fjall::read::View;
use crate::fjall::writer::{
    Counters, FriendAnswer, GroupCmd, NewDevice, NewFriendRequest, NewGroup, NewUser, Pending,
    WriteOp, Writer,
};
use crate::types::check_last_seen_len;
use crate::{
    AppendError, AppendRequest, Appended, CommitSink, ConversationSummary, Friend, FriendError,
    GroupError, GroupPolicy, MessageRange, Store, StoreError,
};

/// The layout version written by this code; opening any other version fails. (2 added
/// groups, friends and per-user conversation state; 1 was never deployed.)
const SCHEMA_VERSION: u64 = 2;
/// Default block cache size, in bytes.
const CACHE_BYTES_DEFAULT: u64 = 256 * 1024 * 1024;
/// Default largest batch, in write ops.
const BATCH_OPS_MAX_DEFAULT: usize = 1024;
/// Default journal file size: fjall's own 64 MiB.
const JOURNAL_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// Default nice value of the engine's background threads. At 67,000 msg/s paced on two
/// cores, three alternating runs each gave send→deliver p99 8.2, 7.9, 8.2 ms at 10 against 9.1,
/// 8.7, 9.4 ms at 0 (19 gave 6.6, 11.2, 7.8). 10 still leaves them a tenth of a contended
/// core, so a background thread holding a lock the commit thread wants is not starved.
pub const BACKGROUND_NICE_DEFAULT: i32 = 10;

pub use commit::COMMIT_BUSY_OPS_MIN;

/// Default of [`FjallConfig::commit_interval_min`]. A busy store's commits then start at
/// least this far apart, so a message waits on average about half of it for its commit: the
/// interval is a floor under the median latency, which the foundation's target puts at 2 ms.
/// On a two-core AMD EPYC VM at 67,000 msg/s paced (half the maximum), two alternating runs
/// each: over 10 pairs, 0.5 ms gave send→deliver p50 1.11 and 1.16 ms, p99 6.8 and 8.5 ms,
/// against p50 3.4 and 3.5, p99 9.4 and 9.6 ms at 2 ms; over 50 pairs, where the machine is
/// saturated, p50 3.6–6.9 against 7.2–9.5 ms and p99 23–36 against 17–29 ms (four runs
/// each). 2 ms had been chosen on an older VM for that saturated case: fewer
/// fsyncs (each costs CPU, about 65 µs on that VM) gave its p99 26–38 against 38–62 ms with
/// no interval. A deployment whose disk syncs slowly can raise it.
pub const COMMIT_INTERVAL_MIN_DEFAULT: Duration = Duration::from_micros(500);
/// Largest [`FjallConfig::commit_interval_min`]; larger values are clamped to it. A busy
/// store commits at most `2 * batch_ops_max` ops per interval (about 20,000 ops/s with the
/// default batch size at this bound, though an op may carry many messages), and each
/// message may wait up to the interval for its fsync: values near it suit only tests and
/// experiments.
pub const COMMIT_INTERVAL_MAX: Duration = Duration::from_millis(100);
/// A commit running longer than this makes the store unhealthy (`Store::health`): every
/// write waits behind it, so a node whose disk stopped answering should be taken out.
/// Commits take milliseconds; the slowest fsync seen on a busy virtual disk took 140 ms.
pub const COMMIT_STALL_MS: u64 = 10_000;

/// Smallest journal file fjall accepts (see [`FjallConfig::for_tests`]).
pub const JOURNAL_BYTES_MIN: u64 = 1024 * 1024;
/// Capacity of the queue to the writer, in write ops. When it is full, writers wait
/// asynchronously (backpressure) instead of piling up memory.
const WRITE_QUEUE_OPS_MAX: usize = 4096;
/// Name of the writer thread, as seen in `top -H`, debuggers and panics.
const WRITER_THREAD_NAME: &str = "magpie-writer";

/// How to open a [`FjallStore`].
#[derive(Debug, Clone)]
pub struct FjallConfig {
    /// The database directory; created if missing.
    pub path: PathBuf,
    /// Block cache size, in bytes.
    pub cache_bytes: u64,
    /// Most write ops committed with one fsync. Larger batches raise throughput under load
    /// and the latency of the ops at the end of a batch.
    pub batch_ops_max: usize,
    /// Group size limit and fan-out threshold.
    pub policy: GroupPolicy,
    /// Largest memtable of a keyspace created by this open, in bytes. Tests make it tiny so
    /// that a few thousand messages drive the engine through many flushes and compactions.
    pub memtable_bytes_max: u64,
    /// Size of each journal file, in bytes (at least 1 MiB). fjall fills the next journal
    /// with zeros on a background thread before rotating into it, so that the commit thread's
    /// `fdatasync` only writes data; see `vendor/README.md`.
    pub journal_bytes: u64,
    /// Nice value (0..=19) of the engine's background threads: flushes, compactions and
    /// preparing journals. They yield the CPU to the writer, the commit thread and the
    /// connections, which messages wait for. It only ever lowers a thread. Process-wide: the
    /// last store opened sets it for every store of the process.
    pub background_nice: i32,
    /// Under load, the least time between the starts of two commits (fsyncs). A commit
    /// waits out the rest of this interval, gathering what is sealed meanwhile, only when the
    /// previous commit carried at least [`COMMIT_BUSY_OPS_MIN`] ops: a lightly loaded store
    /// commits at once, and a busy one spends fewer fsyncs (each costs CPU, a lot of it on a
    /// virtual disk) on the same messages. Zero turns it off; at most
    /// [`COMMIT_INTERVAL_MAX`] (larger values are clamped).
    pub commit_interval_min: Duration,
    /// How the two timeline keyspaces (`messages`, `inbox`) are compacted, for keyspaces
    /// created by this open (an existing keyspace keeps the strategy it was created with).
    pub timeline_compaction: TimelineCompaction,
}

/// Compaction strategy of the timeline keyspaces; see `keys::TIERED_RUNS_PER_LEVEL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimelineCompaction {
    /// Size-tiered: each byte is rewritten about once per level; a range read consults more
    /// runs. The default: timelines are written far more than they are read from disk.
    #[default]
    Tiered,
    /// Leveled, as every other keyspace: fewer runs per read, about ten times the merge work
    /// per level for keys appended to many streams at once. For comparison (`benches/reads.rs`).
    Leveled,
}

impl FjallConfig {
    /// Defaults: 256 MiB of cache, batches of up to 1024 ops, the default [`GroupPolicy`],
    /// 64 MiB journals, background threads at nice [`BACKGROUND_NICE_DEFAULT`].
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            cache_bytes: CACHE_BYTES_DEFAULT,
            batch_ops_max: BATCH_OPS_MAX_DEFAULT,
            policy: GroupPolicy::default(),
            memtable_bytes_max: keys::MEMTABLE_BYTES_MAX,
            journal_bytes: JOURNAL_BYTES_DEFAULT,
            background_nice: BACKGROUND_NICE_DEFAULT,
            commit_interval_min: COMMIT_INTERVAL_MIN_DEFAULT,
            timeline_compaction: TimelineCompaction::default(),
        }
    }

    /// Defaults but for journals of [`JOURNAL_BYTES_MIN`]: tests rotate journals often and
    /// write little to the disk.
    pub fn for_tests(path: impl Into<PathBuf>) -> Self {
        Self {
            journal_bytes: JOURNAL_BYTES_MIN,
            ..Self::new(path)
        }
    }
}

/// The hash map of the writer's write sets and caches. foldhash instead of the standard
/// SipHash: hashing keys took 12–16% of the writer thread in profiles, and foldhash's
/// per-process random seed still keeps client-chosen keys (idempotency keys) from being
/// aimed at one bucket.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// State shared by the store handle, the read tasks and the writer thread.
pub(crate) struct Shared {
    /// The database; kept so the writer can commit and the readers can snapshot.
    pub(crate) db: Database,
    /// Handles to every keyspace.
    pub(crate) ks: Keyspaces,
    /// The state as of the last fsync that returned. Replaced by the commit thread after every
    /// fsync, before it replies; readers clone it (cheap) and read at that instant.
    pub(crate) durable: RwLock<Snapshot>,
    /// Set after a failed commit or fsync: the on-disk state is unknown, writes are refused.
    pub(crate) poisoned: AtomicBool,
    /// When the commit in progress started, in ms since `opened` plus one (so that 0 means
    /// none is running): lets `health` tell a disk that stopped answering from an idle store.
    /// Measured on the monotonic clock: a wall clock stepped by NTP would fake or hide a stall.
    pub(crate) commit_started_ms: AtomicU64,
    /// The monotonic origin of `commit_started_ms`.
    pub(crate) opened: std::time::Instant,
}

/// How long the commit that started at `started` (0: none) has run at `now`, if that is
/// longer than [`COMMIT_STALL_MS`]. Both on `Shared::clock_ms`'s clock.
fn stalled_for(started: u64, now: u64) -> Option<u64> {
    let running_ms = now.saturating_sub(started);
    (started != 0 && running_ms > COMMIT_STALL_MS).then_some(running_ms)
}

impl Shared {
    /// Milliseconds since this store was opened, plus one (never 0), on the monotonic clock.
    pub(crate) fn clock_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    /// Opens the database and its keyspaces; returns the id counters found in `meta`.
    pub(crate) fn open(config: &FjallConfig) -> Result<(Arc<Shared>, Counters), StoreError> {
        // Process-wide, and set before the open starts fjall's workers.
        fjall::background::set_background_nice(config.background_nice);
        let db = Database::builder(&config.path)
            .cache_size(config.cache_bytes)
            // We fsync explicitly once per batch; no need for fjall to flush on every commit.
            .manual_journal_persist(true)
            .journal_file_bytes(config.journal_bytes.max(JOURNAL_BYTES_MIN))
            .open()?;
        let ks = Keyspaces::open(&db, config.memtable_bytes_max, config.timeline_compaction)?;
        let ids = init_meta(&db, &ks)?;
        let durable = RwLock::new(db.snapshot());
        Ok((
            Arc::new(Shared {
                db,
                ks,
                durable,
                poisoned: AtomicBool::new(false),
                commit_started_ms: AtomicU64::new(0),
                opened: std::time::Instant::now(),
            }),
            ids,
        ))
    }
}

/// The embedded store. `Send + Sync`; hold it as `Arc<dyn Store>`.
pub struct FjallStore {
    /// Shared with read tasks and the writer thread.
    shared: Arc<Shared>,
    /// The queue to the writer; `None` once closed, which makes the writer drain and exit.
    tx: RwLock<Option<mpsc::Sender<WriteOp>>>,
    /// The writer thread, joined by [`FjallStore::close`].
    writer: Mutex<Option<JoinHandle<()>>>,
    /// The writer's commit thread, which calls the sink.
    commit_thread: Option<std::thread::ThreadId>,
}

impl FjallStore {
    /// Opens or creates the database at `config.path` and starts the writer thread.
    ///
    /// Blocking (it reads the journal and may recover); call it before the runtime starts or
    /// from `spawn_blocking`. Every committed event is announced to `sink` on the writer's commit thread.
    pub fn open(config: FjallConfig, sink: Arc<dyn CommitSink>) -> Result<FjallStore, StoreError> {
        let (shared, ids) = Shared::open(&config)?;
        let (tx, rx) = mpsc::channel(WRITE_QUEUE_OPS_MAX);
        let writer = Writer::new(
            shared.clone(),
            sink,
            config.policy,
            config.batch_ops_max,
            config.commit_interval_min.min(COMMIT_INTERVAL_MAX),
            ids,
        )?;
        let commit_thread = writer.commit_thread_id();
        let handle = std::thread::Builder::new()
            .name(WRITER_THREAD_NAME.into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Engine(format!("cannot start the writer thread: {e}")))?;
        Ok(FjallStore {
            shared,
            tx: RwLock::new(Some(tx)),
            writer: Mutex::new(Some(handle)),
            commit_thread,
        })
    }

    /// Stops accepting writes, lets the writer commit everything already queued, persists and
    /// joins it. Idempotent; also run by `Drop`. Blocks until in-flight writes are queued and
    /// committed, so call it once callers have stopped (it is quick then).
    pub fn close(&self) {
        drop(self.tx.write().take());
        let Some(handle) = self.writer.lock().take() else {
            return;
        };
        let me = std::thread::current().id();
        if handle.thread().id() == me || self.commit_thread == Some(me) {
            // Dropped from the writer's own threads (e.g. by the sink): the writer exits on its
            // own once the queue is closed, and joining it from here would wait for ourselves.
            return;
        }
        if handle.join().is_err() {
            tracing::error!("the store writer thread panicked");
        }
    }

    /// Sends one op to the writer and waits for its durable outcome.
    async fn write<C: Send, T: Send>(
        &self,
        cmd: C,
        wrap: fn(Pending<C, T>) -> WriteOp,
    ) -> Result<T, StoreError> {
        if self.shared.poisoned.load(Ordering::Acquire) {
            return Err(StoreError::Poisoned);
        }
        let tx = self.tx.read().clone();
        let Some(tx) = tx else {
            return Err(StoreError::Closed);
        };
        let (reply, rx) = oneshot::channel();
        // Waits (asynchronously) while the queue is full: backpressure without blocking a worker.
        tx.send(wrap(Pending::new(cmd, reply)))
            .await
            .map_err(|_| StoreError::Closed)?;
        // Release our sender before waiting, so `close` only waits for ops, not for callers.
        drop(tx);
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` on the blocking pool against the latest durable snapshot.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&View<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let snap = shared.durable.read().clone();
            f(&View {
                ks: &shared.ks,
                snap: &snap,
            })
        })
        .await
        .map_err(|e| StoreError::Engine(format!("read task failed: {e}")))?
    }
}

#[cfg(feature = "fault-injection")]
impl FjallStore {
    /// Puts the store in the state a failed commit or fsync leaves it in: every later write is
    /// refused with `StoreError::Poisoned`. Only for tests of how the layers above react.
    pub fn inject_poison(&self) {
        self.shared.poisoned.store(true, Ordering::Release);
    }
}

impl Drop for FjallStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// Checks the schema version (writing it into a fresh database) and loads the id counters.
fn init_meta(db: &Database, ks: &Keyspaces) -> Result<Counters, StoreError> {
    let meta = ks.get(Ks::Meta);
    match meta.get(META_SCHEMA_VERSION)? {
        Some(v) => {
            let version = be_u64(&v, "schema version")?;
            if version != SCHEMA_VERSION {
                return Err(StoreError::Corrupt(format!(
                    "database has schema version {version}, this build reads {SCHEMA_VERSION}"
                )));
            }
        }
        None => {
            if Ks::ALL
                .iter()
                .any(|k| ks.get(*k).first_key_value().is_some())
            {
                return Err(StoreError::Corrupt(
                    "database has data but no schema version".into(),
                ));
            }
            let mut batch = db.batch().durability(None);
            batch.insert(meta, META_SCHEMA_VERSION, SCHEMA_VERSION.to_be_bytes());
            batch.commit()?;
            db.persist(PersistMode::SyncAll)?;
        }
    }
    let counter = |key: &[u8], what: &str| -> Result<u64, StoreError> {
        match meta.get(key)? {
            Some(v) => be_u64(&v, what),
            None => Ok(1),
        }
    };
    Ok(Counters {
        next_user: counter(META_NEXT_USER_ID, "next user id")?,
        next_device: counter(META_NEXT_DEVICE_ID, "next device id")?,
        next_conversation: counter(META_NEXT_CONVERSATION_ID, "next conversation id")?,
        next_request: counter(META_NEXT_REQUEST_ID, "next request id")?,
    })
}

#[async_trait]
impl Store for FjallStore {
    fn health(&self) -> Result<(), StoreError> {
        if self.shared.poisoned.load(Ordering::Acquire) {
            return Err(StoreError::Poisoned);
        }
        let started = self.shared.commit_started_ms.load(Ordering::Acquire);
        if let Some(running_ms) = stalled_for(started, self.shared.clock_ms()) {
            return Err(StoreError::Stalled(running_ms));
        }
        let writer_alive = self
            .writer
            .lock()
            .as_ref()
            .is_some_and(|handle| !handle.is_finished());
        if self.tx.read().is_none() || !writer_alive {
            return Err(StoreError::Closed);
        }
        Ok(())
    }

    async fn create_user(
        &self,
        username: String,
        password_hash: String,
    ) -> Result<User, StoreError> {
        self.write(
            NewUser {
                username,
                password_hash,
            },
            WriteOp::CreateUser,
        )
        .await
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError> {
        self.read(move |v| v.user_by_id(id)).await
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<User>, StoreError> {
        let username = username.to_owned();
        self.read(move |v| v.user_by_name(&username)).await
    }

    async fn create_device(
        &self,
        user: UserId,
        name: String,
        token_hash: [u8; 32],
    ) -> Result<Device, StoreError> {
        self.write(
            NewDevice {
                user,
                name,
                token_hash,
            },
            WriteOp::CreateDevice,
        )
        .await
    }

    async fn device_by_token(&self, token_hash: [u8; 32]) -> Result<Option<Device>, StoreError> {
        self.read(move |v| v.device_by_token(&token_hash)).await
    }

    async fn device(&self, id: DeviceId) -> Result<Option<Device>, StoreError> {
        self.read(move |v| v.device(id)).await
    }

    async fn revoke_device(&self, id: DeviceId) -> Result<(), StoreError> {
        self.write(id, WriteOp::RevokeDevice).await
    }

    async fn ack_cursor(&self, id: DeviceId, cursor: Cursor) -> Result<(), StoreError> {
        self.write((id, cursor), WriteOp::AckCursor).await
    }

    async fn direct_conversation(&self, a: UserId, b: UserId) -> Result<Conversation, StoreError> {
        // Fast path: an existing pair is a read, and needs neither the writer nor an fsync.
        // (Its users exist: users are never deleted.)
        if let Some(conv) = self.read(move |v| v.direct(a, b)).await? {
            return Ok(conv);
        }
        self.write((a, b), WriteOp::DirectConversation).await
    }

    async fn conversation(&self, id: ConversationId) -> Result<Option<Conversation>, StoreError> {
        self.read(move |v| v.conversation(id)).await
    }

    async fn append(
        &self,
        batch: Vec<AppendRequest>,
    ) -> Result<Vec<Result<Appended, AppendError>>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.write(batch, WriteOp::Append).await
    }

    async fn messages(
        &self,
        conversation: ConversationId,
        range: MessageRange,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        self.read(move |v| v.messages(conversation, range, limit))
            .await
    }

    async fn events(
        &self,
        user: UserId,
        after: Cursor,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        self.read(move |v| v.events(user, after, limit)).await
    }

    async fn inbox_head(&self, user: UserId) -> Result<Cursor, StoreError> {
        self.read(move |v| v.inbox_head(user)).await
    }

    async fn last_seq(&self, conversation: ConversationId) -> Result<Seq, StoreError> {
        self.read(move |v| v.last_seq(conversation)).await
    }

    async fn sent_message(
        &self,
        sender: UserId,
        client_msg_id: &ClientMsgId,
    ) -> Result<Option<Message>, StoreError> {
        let key = keys::dedup_key(sender, client_msg_id);
        self.read(move |v| v.sent_message(&key)).await
    }

    async fn request_friend(
        &self,
        from: UserId,
        to: UserId,
        message: String,
    ) -> Result<Result<FriendRequest, FriendError>, StoreError> {
        self.write(
            NewFriendRequest { from, to, message },
            WriteOp::RequestFriend,
        )
        .await
    }

    async fn friend_requests(
        &self,
        user: UserId,
    ) -> Result<(Vec<FriendRequest>, Vec<FriendRequest>), StoreError> {
        self.read(move |v| v.friend_requests(user)).await
    }

    async fn answer_friend_request(
        &self,
        user: UserId,
        request: RequestId,
        accept: bool,
    ) -> Result<Result<Option<Conversation>, FriendError>, StoreError> {
        self.write(
            FriendAnswer {
                user,
                request,
                accept,
            },
            WriteOp::AnswerFriend,
        )
        .await
    }

    async fn friends(&self, user: UserId) -> Result<Vec<Friend>, StoreError> {
        self.read(move |v| v.friends(user)).await
    }

    async fn are_friends(&self, a: UserId, b: UserId) -> Result<bool, StoreError> {
        self.read(move |v| v.are_friends(a, b)).await
    }

    async fn remove_friend(&self, user: UserId, other: UserId) -> Result<bool, StoreError> {
        self.write((user, other), WriteOp::RemoveFriend).await
    }

    async fn create_group(
        &self,
        owner: UserId,
        name: String,
        members: Vec<UserId>,
    ) -> Result<Result<Conversation, GroupError>, StoreError> {
        self.write(
            NewGroup {
                owner,
                name,
                members,
            },
            WriteOp::CreateGroup,
        )
        .await
    }

    async fn add_members(
        &self,
        actor: UserId,
        conversation: ConversationId,
        users: Vec<UserId>,
    ) -> Result<Result<Option<Arc<Message>>, GroupError>, StoreError> {
        self.write(group_cmd(actor, conversation, users), WriteOp::AddMembers)
            .await
    }

    async fn remove_member(
        &self,
        actor: UserId,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<Result<Vec<Arc<Message>>, GroupError>, StoreError> {
        self.write(group_cmd(actor, conversation, user), WriteOp::RemoveMember)
            .await
    }

    async fn set_role(
        &self,
        actor: UserId,
        conversation: ConversationId,
        user: UserId,
        role: Role,
    ) -> Result<Result<Arc<Message>, GroupError>, StoreError> {
        self.write(
            group_cmd(actor, conversation, (user, role)),
            WriteOp::SetRole,
        )
        .await
    }

    async fn rename_group(
        &self,
        actor: UserId,
        conversation: ConversationId,
        name: String,
    ) -> Result<Result<Arc<Message>, GroupError>, StoreError> {
        self.write(group_cmd(actor, conversation, name), WriteOp::RenameGroup)
            .await
    }

    async fn member(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<Option<Member>, StoreError> {
        self.read(move |v| v.member(conversation, user)).await
    }

    async fn members(
        &self,
        conversation: ConversationId,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<Vec<Member>, StoreError> {
        self.read(move |v| v.members(conversation, after, limit))
            .await
    }

    async fn conversations_of(&self, user: UserId) -> Result<Vec<ConversationSummary>, StoreError> {
        self.read(move |v| v.conversations_of(user)).await
    }

    async fn conversation_summary(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<Option<ConversationSummary>, StoreError> {
        self.read(move |v| v.conversation_summary(conversation, user))
            .await
    }

    async fn mark_read(
        &self,
        user: UserId,
        conversation: ConversationId,
        seq: Seq,
    ) -> Result<Result<Seq, GroupError>, StoreError> {
        self.write(group_cmd(user, conversation, seq), WriteOp::MarkRead)
            .await
    }

    async fn set_muted(
        &self,
        user: UserId,
        conversation: ConversationId,
        muted: bool,
    ) -> Result<Result<(), GroupError>, StoreError> {
        self.write(group_cmd(user, conversation, muted), WriteOp::SetMuted)
            .await
    }

    async fn record_last_seen(&self, seen: Vec<(UserId, u64)>) -> Result<(), StoreError> {
        check_last_seen_len(&seen)?;
        self.write(seen, WriteOp::RecordLastSeen).await
    }

    async fn last_seen(&self, users: &[UserId]) -> Result<Vec<u64>, StoreError> {
        let users = users.to_vec();
        self.read(move |v| v.last_seen(&users)).await
    }
}

fn group_cmd<A>(actor: UserId, conversation: ConversationId, args: A) -> GroupCmd<A> {
    GroupCmd {
        actor,
        conversation,
        args,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NoopSink;

    #[test]
    fn a_commit_stuck_on_the_disk_makes_the_store_unhealthy() {
        assert_eq!(stalled_for(0, 1_000_000), None, "no commit running");
        assert_eq!(
            stalled_for(1_000, 1_000 + COMMIT_STALL_MS),
            None,
            "slow, not stalled"
        );
        assert_eq!(
            stalled_for(1_000, 2_000 + COMMIT_STALL_MS),
            Some(1_000 + COMMIT_STALL_MS)
        );
        assert_eq!(
            stalled_for(5_000, 1_000),
            None,
            "a clock read before the start"
        );

        let dir = tempfile::tempdir().unwrap();
        let store =
            FjallStore::open(FjallConfig::for_tests(dir.path()), Arc::new(NoopSink)).unwrap();
        assert!(store.health().is_ok());
        // A commit that started at the store's opening, read 20 s later, is stalled.
        store.shared.commit_started_ms.store(1, Ordering::Release);
        let later = store.shared.clock_ms() + 2 * COMMIT_STALL_MS;
        assert!(stalled_for(1, later).is_some());
        store.shared.commit_started_ms.store(0, Ordering::Release);
        assert!(store.health().is_ok(), "healthy when no commit is running");
        store.close();
        assert!(matches!(store.health(), Err(StoreError::Closed)));
    }
}
