//! The writer thread: the only code that decides what the database will hold.
//!
//! It blocks for one [`WriteOp`], drains whatever else is queued (up to `batch_ops_max` ops),
//! stages every op into an in-memory write set and seals it as one batch for the commit thread
//! ([`crate::fjall::commit`]), which applies it as ONE fjall batch, fsyncs once, publishes the
//! new durable snapshot, announces the batch's inbox events and conversation notices to the
//! sink and only then replies. One fsync is shared by every op of the batch ("group commit"),
//! and the next batch is staged while the previous one is being committed.
//!
//! Because it is the only writer, it can keep id counters, the last seq of each conversation,
//! the head cursor of each inbox, conversation records and member lists in memory and never
//! scan while appending: an append to a 10,000-member read-fan-out group writes the message
//! and its dedup key, and reads nothing but cache entries.

use std::collections::hash_map::Entry;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use fjall::{PersistMode, Slice};
use magpie_core::{
    now_ms, ClientMsgId, Conversation, ConversationId, ConversationKind, Cursor, Device, DeviceId,
    Event, EventPayload, FriendRequest, Member, Message, RequestId, Role, Seq, SystemEvent, User,
    UserEvent, UserId,
};
use tokio::sync::{mpsc, oneshot};

use crate::fjall::codec::{
    decode_conversation, decode_device, decode_device_ids, decode_friend_request, decode_member,
    decode_message, encode_conversation, encode_device, encode_device_ids, encode_event,
    encode_friend_request, encode_member, encode_message, encode_user, StoredEvent,
};
use crate::fjall::commit::{
    keys_written, writes_nothing, Committer, Progress, Sealed, WriteSet, SEALED_BATCHES_MAX,
};
use crate::fjall::keys::{
    be_u64, conv_key, dedup_key, device_key, direct_key, friend_key, inbox_key, member_key,
    message_key, pair, parse_pair, request_key, request_pair_key, user_conv_key, user_key,
    user_request_key, Ks, META_NEXT_CONVERSATION_ID, META_NEXT_DEVICE_ID, META_NEXT_REQUEST_ID,
    META_NEXT_USER_ID,
};
use crate::fjall::read::{inbox_head_of, last_message_of};
use crate::fjall::{FastMap, Shared};
use crate::memory::{
    new_member, pushes_receipts, removal_event, successor, system_msg_id, writes_fanout,
};
use crate::{
    AppendError, AppendRequest, Appended, CommitSink, ConversationNotice, FriendError, GroupError,
    GroupPolicy, StoreError,
};

/// Past this many entries a cache is dropped at the next batch boundary and refilled lazily
/// from disk, so memory stays bounded however many conversations and users have been active
/// since the store opened (at the bound: tens of MiB for tips and heads, roughly 100 MiB of
/// cached conversations).
const CACHE_ENTRIES_MAX: usize = 1 << 20;

/// Past this many user ids across all cached member lists (8 bytes each: 32 MiB), the member
/// list cache is dropped at the next batch boundary. A dropped list is reloaded with one range
/// scan of its conversation's member rows on the next append.
const CACHED_MEMBER_IDS_MAX: usize = 1 << 22;

/// Past this many senders the id ceiling cache is dropped at the next batch boundary. An
/// entry holds one client message id (at most `CLIENT_MSG_ID_BYTES_MAX` bytes), so the cache
/// stays below ~50 MiB; a dropped ceiling is reloaded with one reverse range read.
const CEILINGS_MAX: usize = 1 << 18;

/// A batch stops taking more ops once their payload reaches this many bytes, so a burst of
/// large messages cannot make one batch (held twice in memory while staged) arbitrarily big.
const BATCH_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Keys plus events one batch stages before the remaining ops wait for the next batch. The
/// payload estimate that gathers ops (`BATCH_BYTES_MAX`) cannot see fan-out: one op of 512
/// sends to a 500-member group stages 256,000 inbox rows and as many events while its
/// estimate counts only the texts. Bounding what was actually staged keeps many such ops from
/// piling into one batch (which is held twice in memory, up to five batches at a time). A
/// single op is never split, so one batch holds at most this plus one op.
const BATCH_STAGED_MAX: usize = 1 << 16;

/// Name of the commit thread, as seen in `top -H`, debuggers and panics.
const COMMIT_THREAD_NAME: &str = "magpie-commit";

/// A queued mutation with its reply slot.
pub(crate) struct Pending<C, T> {
    /// What to do.
    cmd: C,
    /// Where the caller waits; answered only after the batch is durable (or failed).
    reply: oneshot::Sender<Result<T, StoreError>>,
    /// The staged outcome, valid once the batch commits.
    result: Option<Result<T, StoreError>>,
    /// Set when staging this op hit an engine error; the op is then left out of the batch.
    failed: Option<StoreError>,
}

impl<C, T> Pending<C, T> {
    pub(crate) fn new(cmd: C, reply: oneshot::Sender<Result<T, StoreError>>) -> Self {
        Self {
            cmd,
            reply,
            result: None,
            failed: None,
        }
    }

    /// Stages the op with `f`. An engine or corruption error aborts the whole staging attempt
    /// (the caller restages the others without this op); any other error is this op's answer.
    fn stage(&mut self, f: impl FnOnce(&C) -> Result<T, StoreError>) -> Result<(), StoreError> {
        if self.failed.is_some() {
            return Ok(());
        }
        match f(&self.cmd) {
            Err(e) if aborts_staging(&e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
            r => {
                self.result = Some(r);
                Ok(())
            }
        }
    }

    fn finish(self) {
        let r = match (self.failed, self.result) {
            (Some(e), _) => Err(e),
            (None, Some(r)) => r,
            (None, None) => Err(StoreError::Engine("write was never staged".into())),
        };
        // The caller may have given up (dropped its future); nothing to do then.
        let _ = self.reply.send(r);
    }

    fn fail(self, e: StoreError) {
        let _ = self.reply.send(Err(e));
    }
}

/// Errors that mean "the disk could not be read", as opposed to an answer for the caller.
/// An op that answers with an error must not have staged any write before deciding so.
fn aborts_staging(e: &StoreError) -> bool {
    !matches!(e, StoreError::UsernameTaken | StoreError::NotFound(_))
}

/// A new account, as `Store::create_user` received it.
pub(crate) struct NewUser {
    /// Must not exist yet.
    pub(crate) username: String,
    /// Stored as given.
    pub(crate) password_hash: String,
}

/// A new device, as `Store::create_device` received it.
pub(crate) struct NewDevice {
    /// Must exist.
    pub(crate) user: UserId,
    /// Stored as given.
    pub(crate) name: String,
    /// Indexed in `tokens`.
    pub(crate) token_hash: [u8; 32],
}

/// `Store::request_friend`'s arguments.
pub(crate) struct NewFriendRequest {
    pub(crate) from: UserId,
    pub(crate) to: UserId,
    pub(crate) message: String,
}

/// `Store::answer_friend_request`'s arguments.
pub(crate) struct FriendAnswer {
    pub(crate) user: UserId,
    pub(crate) request: RequestId,
    pub(crate) accept: bool,
}

/// `Store::create_group`'s arguments.
pub(crate) struct NewGroup {
    pub(crate) owner: UserId,
    pub(crate) name: String,
    pub(crate) members: Vec<UserId>,
}

/// A group operation: who does it, to which conversation, and what.
pub(crate) struct GroupCmd<A> {
    pub(crate) actor: UserId,
    pub(crate) conversation: ConversationId,
    pub(crate) args: A,
}

/// A queued group operation answered with a `GroupError` or a `T`.
type GroupOp<A, T> = Pending<GroupCmd<A>, Result<T, GroupError>>;

/// A group operation's outcome: the disk failed (outer) or the operation was refused (inner).
type GroupResult<T> = Result<Result<T, GroupError>, StoreError>;

/// The value of a `Result<T, GroupError>`, or the refusal returned as the op's answer (the
/// inner half of a [`GroupResult`]).
macro_rules! or_refuse {
    ($refusable:expr) => {
        match $refusable {
            Ok(value) => value,
            Err(refusal) => return Ok(Err(refusal)),
        }
    };
}
/// A friend operation's outcome, likewise.
type FriendResult<T> = Result<Result<T, FriendError>, StoreError>;

/// Every mutation the writer performs; one variant per mutating `Store` method.
pub(crate) enum WriteOp {
    /// `Store::create_user`.
    CreateUser(Pending<NewUser, User>),
    /// `Store::create_device`.
    CreateDevice(Pending<NewDevice, Device>),
    /// `Store::revoke_device`.
    RevokeDevice(Pending<DeviceId, ()>),
    /// `Store::ack_cursor`.
    AckCursor(Pending<(DeviceId, Cursor), ()>),
    /// `Store::direct_conversation` when the pair has no conversation yet (as of the read).
    DirectConversation(Pending<(UserId, UserId), Conversation>),
    /// `Store::append`.
    Append(Pending<Vec<AppendRequest>, Vec<Result<Appended, AppendError>>>),
    /// `Store::request_friend`.
    RequestFriend(Pending<NewFriendRequest, Result<FriendRequest, FriendError>>),
    /// `Store::answer_friend_request`.
    AnswerFriend(Pending<FriendAnswer, Result<Option<Conversation>, FriendError>>),
    /// `Store::remove_friend`: (user, other).
    RemoveFriend(Pending<(UserId, UserId), bool>),
    /// `Store::create_group`.
    CreateGroup(Pending<NewGroup, Result<Conversation, GroupError>>),
    /// `Store::add_members`: the users to add.
    AddMembers(GroupOp<Vec<UserId>, Option<Arc<Message>>>),
    /// `Store::remove_member`: the user to remove.
    RemoveMember(GroupOp<UserId, Vec<Arc<Message>>>),
    /// `Store::set_role`: the user and their new role.
    SetRole(GroupOp<(UserId, Role), Arc<Message>>),
    /// `Store::rename_group`: the new name.
    RenameGroup(GroupOp<String, Arc<Message>>),
    /// `Store::mark_read` (the actor is the reader).
    MarkRead(GroupOp<Seq, Seq>),
    /// `Store::set_muted` (the actor is the member).
    SetMuted(GroupOp<bool, ()>),
    /// `Store::record_last_seen`.
    RecordLastSeen(Pending<Vec<(UserId, u64)>, ()>),
}

/// Applies `$f` to the `Pending` inside any `WriteOp`.
macro_rules! each_op {
    ($op:expr, $p:ident => $body:expr) => {
        match $op {
            WriteOp::CreateUser($p) => $body,
            WriteOp::CreateDevice($p) => $body,
            WriteOp::RevokeDevice($p) => $body,
            WriteOp::AckCursor($p) => $body,
            WriteOp::DirectConversation($p) => $body,
            WriteOp::Append($p) => $body,
            WriteOp::RequestFriend($p) => $body,
            WriteOp::AnswerFriend($p) => $body,
            WriteOp::RemoveFriend($p) => $body,
            WriteOp::CreateGroup($p) => $body,
            WriteOp::AddMembers($p) => $body,
            WriteOp::RemoveMember($p) => $body,
            WriteOp::SetRole($p) => $body,
            WriteOp::RenameGroup($p) => $body,
            WriteOp::MarkRead($p) => $body,
            WriteOp::SetMuted($p) => $body,
            WriteOp::RecordLastSeen($p) => $body,
        }
    };
}

impl WriteOp {
    /// Roughly how many bytes this op adds to a batch (texts and member lists dominate).
    fn payload_bytes(&self) -> usize {
        match self {
            WriteOp::Append(p) => p
                .cmd
                .iter()
                .map(|r| r.text.len() + r.client_msg_id.as_str().len())
                .sum(),
            WriteOp::CreateUser(p) => p.cmd.username.len() + p.cmd.password_hash.len(),
            WriteOp::CreateDevice(p) => p.cmd.name.len(),
            WriteOp::RequestFriend(p) => p.cmd.message.len(),
            // Per member: a member row, an index row and an inbox event, plus the id in the
            // system message.
            WriteOp::CreateGroup(p) => p.cmd.name.len() + 64 * p.cmd.members.len(),
            WriteOp::AddMembers(p) => 64 * p.cmd.args.len(),
            WriteOp::RenameGroup(p) => p.cmd.args.len(),
            WriteOp::RevokeDevice(_)
            | WriteOp::AckCursor(_)
            | WriteOp::DirectConversation(_)
            | WriteOp::AnswerFriend(_)
            | WriteOp::RemoveFriend(_)
            | WriteOp::RemoveMember(_)
            | WriteOp::SetRole(_)
            | WriteOp::MarkRead(_)
            | WriteOp::SetMuted(_) => 0,
            WriteOp::RecordLastSeen(p) => 16 * p.cmd.len(),
        }
    }

    pub(crate) fn finish(self) {
        each_op!(self, p => p.finish())
    }

    pub(crate) fn fail(self, e: StoreError) {
        each_op!(self, p => p.fail(e))
    }
}

/// The next id of each kind; persisted in `meta` whenever one is allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counters {
    /// The id the next user gets.
    pub(crate) next_user: u64,
    /// The id the next device gets.
    pub(crate) next_device: u64,
    /// The id the next conversation gets.
    pub(crate) next_conversation: u64,
    /// The id the next friend request gets.
    pub(crate) next_request: u64,
}

/// The newest message of a conversation, as far as the writer needs it.
#[derive(Debug, Clone, Copy)]
struct Tip {
    /// Its seq; the next message gets `seq + 1`.
    seq: Seq,
    /// Its timestamp; the next message gets at least this, so ts_ms never decreases within a
    /// conversation even if the wall clock steps back.
    ts_ms: u64,
}

/// Where a message to stage comes from.
enum Origin {
    /// A user's text with its idempotency key (indexed in `dedup`).
    User(ClientMsgId, String),
    /// A system message (no text, no dedup entry, client id `sys-{conv}-{seq}`).
    System(SystemEvent),
}

/// One staging attempt: the write set of the batch plus what to announce after commit.
struct Staged {
    /// Per keyspace (`Ks as usize`): key → new value, or `None` for a delete. A map rather than
    /// a list so a key written twice in one batch appears once, and so later ops of the batch
    /// read the earlier ops' writes (the overlay).
    writes: WriteSet,
    /// New inbox events in staging order, which is cursor order per user.
    events: Vec<UserEvent>,
    /// The latest read-fan-out notice per conversation, with the staging step that set it (so
    /// notices are announced in the order of their last message).
    notices: FastMap<ConversationId, (usize, ConversationNotice)>,
    /// Bumped per notice; orders `notices`.
    notice_step: usize,
    /// New (non-duplicate) messages, for the metric.
    messages_appended: u64,
}

impl Staged {
    fn new() -> Self {
        Self {
            writes: vec![FastMap::default(); Ks::ALL.len()],
            events: Vec::new(),
            notices: FastMap::default(),
            notice_step: 0,
            messages_appended: 0,
        }
    }

    /// Stages `key` = `value`; true if the key was already staged in this batch.
    fn put(&mut self, ks: Ks, key: impl AsRef<[u8]>, value: impl Into<Slice>) -> bool {
        self.writes[ks as usize]
            .insert(Slice::from(key.as_ref()), Some(value.into()))
            .is_some()
    }

    fn delete(&mut self, ks: Ks, key: impl AsRef<[u8]>) {
        self.writes[ks as usize].insert(Slice::from(key.as_ref()), None);
    }

    fn staged(&self, ks: Ks, key: &[u8]) -> Option<&Option<Slice>> {
        self.writes[ks as usize].get(key)
    }

    fn is_empty(&self) -> bool {
        writes_nothing(&self.writes)
    }

    fn len(&self) -> usize {
        keys_written(&self.writes)
    }

    /// Turns the staging attempt into the batch handed to the commit thread.
    fn seal(mut self, n: u64, ops: Vec<WriteOp>) -> Sealed {
        let notices = self.take_notices();
        Sealed {
            n,
            writes: Arc::new(self.writes),
            events: self.events,
            notices,
            ops,
            messages_appended: self.messages_appended,
        }
    }

    /// Records (or replaces, coalescing within the batch) the notice of a conversation.
    fn notice(&mut self, notice: ConversationNotice) {
        self.notice_step += 1;
        self.notices
            .insert(notice.conversation_id, (self.notice_step, notice));
    }

    /// The batch's notices, in the order their last messages were staged.
    fn take_notices(&mut self) -> Vec<ConversationNotice> {
        let mut notices: Vec<_> = self.notices.drain().map(|(_, n)| n).collect();
        notices.sort_unstable_by_key(|(step, _)| *step);
        notices.into_iter().map(|(_, n)| n).collect()
    }
}

/// The writer's state; lives on the "magpie-writer" thread. Dropping it (also when unwinding)
/// lets the commit thread finish and joins it.
pub(crate) struct Writer {
    /// Database, keyspaces, durable snapshot and poison flag, shared with the readers.
    shared: Arc<Shared>,
    /// Sealed batches go to the commit thread here; `None` once shut down.
    to_commit: Option<SyncSender<Sealed>>,
    /// The commit thread, joined at shutdown.
    commit_thread: Option<JoinHandle<()>>,
    /// How far the commit thread has got.
    progress: Arc<Progress>,
    /// Write sets handed to the commit thread and not yet applied, oldest first, with their
    /// batch numbers. Reads look here (newest first) before the keyspaces, because staging
    /// must see every earlier batch. At most `2 * SEALED_BATCHES_MAX + 1` entries.
    inflight: VecDeque<(u64, Arc<WriteSet>)>,
    /// Number of the last batch sealed (batches count from 1).
    sealed: u64,
    /// Group size limit and fan-out threshold.
    policy: GroupPolicy,
    /// Most ops folded into one batch; bounds batch latency and memory.
    batch_ops_max: usize,
    /// Counters as of the last sealed batch, restored when a staging attempt is thrown away.
    committed_ids: Counters,
    /// Counters including the current staging attempt.
    ids: Counters,
    /// Newest message per conversation touched since open (bounded by `CACHE_ENTRIES_MAX`).
    tips: FastMap<ConversationId, Tip>,
    /// Head cursor per inbox touched since open (bounded by `CACHE_ENTRIES_MAX`).
    heads: FastMap<UserId, Cursor>,
    /// Conversation records read or written since open (bounded by `CACHE_ENTRIES_MAX`). The
    /// writer is the only one changing them, and replaces the entry whenever it does.
    convs: FastMap<ConversationId, Arc<Conversation>>,
    /// Member ids, ascending, per conversation appended to or changed since open. Replaced on
    /// every membership change the writer stages, so a cached list always includes the staged
    /// changes; a miss therefore means nothing of this batch changed that conversation's
    /// members, and the list can be loaded from disk.
    member_lists: FastMap<ConversationId, Arc<[UserId]>>,
    /// Total ids in `member_lists` (bounded by `CACHED_MEMBER_IDS_MAX`).
    cached_member_ids: usize,
    /// Per sender touched since open (bounded by `CEILINGS_MAX`): the greatest client message
    /// id (bytewise) of any dedup key on disk, in flight or staged. A send whose id is above
    /// it is new for certain and skips the dedup lookup, which otherwise probes every
    /// memtable and table of the dedup index (the writer's largest cost per message). Clients
    /// that generate time-ordered ids (the SDK, the web client) take this path almost always;
    /// any other id is looked up as before. Raised whenever a dedup key is staged, so a
    /// ceiling is never below a stored id; one that is too high only costs lookups.
    ceilings: FastMap<UserId, Box<[u8]>>,
    /// Dedup lookups done because an id was not above its sender's ceiling (for tests).
    #[cfg(test)]
    dedup_lookups: u64,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.shut_down();
    }
}

impl Writer {
    /// Creates the writer and starts its commit thread.
    pub(crate) fn new(
        shared: Arc<Shared>,
        sink: Arc<dyn CommitSink>,
        policy: GroupPolicy,
        batch_ops_max: usize,
        commit_interval_min: std::time::Duration,
        ids: Counters,
    ) -> Result<Self, StoreError> {
        let progress = Arc::new(Progress::default());
        let (to_commit, rx) = sync_channel(SEALED_BATCHES_MAX);
        let committer = Committer {
            shared: shared.clone(),
            sink,
            progress: progress.clone(),
            commit_interval_min,
        };
        let commit_thread = std::thread::Builder::new()
            .name(COMMIT_THREAD_NAME.into())
            .spawn(move || committer.run(rx))
            .map_err(|e| StoreError::Engine(format!("cannot start the commit thread: {e}")))?;
        Ok(Self {
            shared,
            to_commit: Some(to_commit),
            commit_thread: Some(commit_thread),
            progress,
            inflight: VecDeque::with_capacity(SEALED_BATCHES_MAX + 1),
            sealed: 0,
            policy,
            batch_ops_max: batch_ops_max.max(1),
            committed_ids: ids,
            ids,
            tips: FastMap::default(),
            heads: FastMap::default(),
            convs: FastMap::default(),
            member_lists: FastMap::default(),
            cached_member_ids: 0,
            ceilings: FastMap::default(),
            #[cfg(test)]
            dedup_lookups: 0,
        })
    }

    /// The thread body: group commit until every sender is gone and the queue is drained.
    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<WriteOp>) {
        let mut ops = Vec::with_capacity(self.batch_ops_max);
        while let Some(first) = rx.blocking_recv() {
            let mut bytes = first.payload_bytes();
            ops.push(first);
            while ops.len() < self.batch_ops_max && bytes < BATCH_BYTES_MAX {
                match rx.try_recv() {
                    Ok(op) => {
                        bytes += op.payload_bytes();
                        ops.push(op);
                    }
                    Err(_) => break,
                }
            }
            self.process(&mut ops);
        }
        self.shut_down();
    }

    /// The commit thread's id (it calls the sink), while it runs.
    pub(crate) fn commit_thread_id(&self) -> Option<std::thread::ThreadId> {
        self.commit_thread.as_ref().map(|h| h.thread().id())
    }

    /// Waits until every batch sealed so far is answered (durable or failed).
    #[cfg(test)]
    pub(crate) fn settle(&self) {
        self.progress.wait_finished(self.sealed);
    }

    /// Lets the commit thread finish every sealed batch, joins it and persists once more.
    /// Runs once, at the end of [`Writer::run`] or when the writer is dropped (unwinding).
    fn shut_down(&mut self) {
        drop(self.to_commit.take());
        let Some(handle) = self.commit_thread.take() else {
            return;
        };
        if handle.join().is_err() {
            tracing::error!("the store commit thread panicked");
            self.shared.poisoned.store(true, Ordering::Release);
        }
        // Every batch was already fsynced; this last persist is belt and braces for shutdown.
        if !self.shared.poisoned.load(Ordering::Acquire) {
            if let Err(e) = self.shared.db.persist(PersistMode::SyncAll) {
                tracing::error!(error = %e, "final persist of the store failed");
            }
        }
    }

    /// Stages `ops` as one batch, or several in order when they stage too much for one, and
    /// hands them to the commit thread, which answers them once they are durable. Drains `ops`.
    pub(crate) fn process(&mut self, ops: &mut Vec<WriteOp>) {
        loop {
            let rest = self.process_batch(ops);
            debug_assert!(ops.is_empty());
            if rest.is_empty() {
                return;
            }
            *ops = rest;
        }
    }

    /// Stages the longest prefix of `ops` that fits one batch (at least one op) and hands it
    /// to the commit thread. Drains `ops`; returns the ops left for the next batch.
    fn process_batch(&mut self, ops: &mut Vec<WriteOp>) -> Vec<WriteOp> {
        if self.shared.poisoned.load(Ordering::Acquire) {
            ops.drain(..).for_each(|op| op.fail(StoreError::Poisoned));
            return Vec::new();
        }
        self.drop_applied_overlays();
        self.bound_caches();

        // A read error while staging marks that op failed; the caches may hold its half-done
        // effects, so drop them and restage the remaining ops against the unchanged disk.
        let (staged, n) = loop {
            match self.stage_all(ops) {
                Ok(staged) => break staged,
                Err(e) => {
                    tracing::warn!(error = %e, "write op failed while staging; restaging the batch without it");
                    self.reset_caches();
                }
            }
        };
        // What did not fit waits for the next batch, behind this one.
        let rest = ops.split_off(n);

        if staged.is_empty() && self.progress.finished() == self.sealed {
            // Nothing changed (reads through the writer, no-op acks, failures) and nothing
            // earlier is still on its way to disk: answer now, no fsync. Unless the batch this
            // one read from failed meanwhile: the commit thread poisons before it reports a
            // failed batch finished, so this check sees it.
            debug_assert!(staged.events.is_empty() && staged.notices.is_empty());
            if self.shared.poisoned.load(Ordering::Acquire) {
                ops.drain(..).for_each(|op| op.fail(StoreError::Poisoned));
            } else {
                ops.drain(..).for_each(WriteOp::finish);
            }
            return rest;
        }
        // Even an empty batch goes through the commit thread when earlier batches are in
        // flight: a duplicate send must not be acknowledged before its original is durable,
        // and a connection's replies keep their order.
        self.committed_ids = self.ids;
        self.sealed += 1;
        let sealed = staged.seal(self.sealed, std::mem::take(ops));
        if !writes_nothing(&sealed.writes) {
            self.inflight.push_back((sealed.n, sealed.writes.clone()));
        }
        let Some(to_commit) = &self.to_commit else {
            sealed
                .ops
                .into_iter()
                .for_each(|op| op.fail(StoreError::Closed));
            return rest;
        };
        if let Err(e) = to_commit.send(sealed) {
            // The commit thread is gone (it panicked): nothing can be made durable any more.
            tracing::error!("the store commit thread is gone; refusing all further writes");
            self.shared.poisoned.store(true, Ordering::Release);
            e.0.ops
                .into_iter()
                .for_each(|op| op.fail(StoreError::Poisoned));
        }
        rest
    }

    /// Forgets the overlays of batches the commit thread has applied: the keyspaces answer
    /// for them now.
    fn drop_applied_overlays(&mut self) {
        let applied = self.progress.applied();
        while self.inflight.front().is_some_and(|(n, _)| *n <= applied) {
            self.inflight.pop_front();
        }
    }

    /// Waits until every sealed batch is in the keyspaces and drops all overlays. Needed
    /// before any cache is cleared: a cache miss is answered by scanning the keyspaces, which
    /// must then hold everything staged so far.
    fn settle_applied(&mut self) {
        self.progress.wait_applied(self.sealed);
        self.inflight.clear();
    }

    /// Stages ops in order until they are all staged or the batch reaches
    /// [`BATCH_STAGED_MAX`]; returns the batch and how many ops (at least one) it holds.
    fn stage_all(&mut self, ops: &mut [WriteOp]) -> Result<(Staged, usize), StoreError> {
        self.ids = self.committed_ids;
        let mut st = Staged::new();
        for (i, op) in ops.iter_mut().enumerate() {
            if i > 0 && st.len() + st.events.len() >= BATCH_STAGED_MAX {
                return Ok((st, i));
            }
            let st = &mut st;
            match op {
                WriteOp::CreateUser(p) => p.stage(|c| self.create_user(st, c))?,
                WriteOp::CreateDevice(p) => p.stage(|c| self.create_device(st, c))?,
                WriteOp::RevokeDevice(p) => p.stage(|c| self.revoke_device(st, *c))?,
                WriteOp::AckCursor(p) => p.stage(|c| self.ack_cursor(st, c.0, c.1))?,
                WriteOp::DirectConversation(p) => p.stage(|c| self.direct(st, c.0, c.1))?,
                WriteOp::Append(p) => p.stage(|c| self.append(st, c))?,
                WriteOp::RequestFriend(p) => p.stage(|c| self.request_friend(st, c))?,
                WriteOp::AnswerFriend(p) => p.stage(|c| self.answer_friend(st, c))?,
                WriteOp::RemoveFriend(p) => p.stage(|c| self.remove_friend(st, c.0, c.1))?,
                WriteOp::CreateGroup(p) => p.stage(|c| self.create_group(st, c))?,
                WriteOp::AddMembers(p) => p.stage(|c| self.add_members(st, c))?,
                WriteOp::RemoveMember(p) => p.stage(|c| self.remove_member(st, c))?,
                WriteOp::SetRole(p) => p.stage(|c| self.set_role(st, c))?,
                WriteOp::RenameGroup(p) => p.stage(|c| self.rename_group(st, c))?,
                WriteOp::MarkRead(p) => p.stage(|c| self.mark_read(st, c))?,
                WriteOp::SetMuted(p) => p.stage(|c| self.set_muted(st, c))?,
                WriteOp::RecordLastSeen(p) => p.stage(|c| self.record_last_seen(st, c))?,
            }
        }
        debug_assert!(
            st.len() >= st.events.len(),
            "every event has its inbox write"
        );
        let n = ops.len();
        Ok((st, n))
    }

    fn bound_caches(&mut self) {
        let over = self.tips.len() > CACHE_ENTRIES_MAX
            || self.heads.len() > CACHE_ENTRIES_MAX
            || self.convs.len() > CACHE_ENTRIES_MAX
            || self.member_lists.len() > CACHE_ENTRIES_MAX
            || self.cached_member_ids > CACHED_MEMBER_IDS_MAX
            || self.ceilings.len() > CEILINGS_MAX;
        if !over {
            return;
        }
        self.settle_applied();
        if self.tips.len() > CACHE_ENTRIES_MAX {
            self.tips.clear();
        }
        if self.heads.len() > CACHE_ENTRIES_MAX {
            self.heads.clear();
        }
        if self.convs.len() > CACHE_ENTRIES_MAX {
            self.convs.clear();
        }
        if self.member_lists.len() > CACHE_ENTRIES_MAX
            || self.cached_member_ids > CACHED_MEMBER_IDS_MAX
        {
            self.member_lists.clear();
            self.cached_member_ids = 0;
        }
        if self.ceilings.len() > CEILINGS_MAX {
            self.ceilings.clear();
        }
    }

    fn reset_caches(&mut self) {
        self.settle_applied();
        self.tips.clear();
        self.heads.clear();
        self.convs.clear();
        self.member_lists.clear();
        self.cached_member_ids = 0;
        self.ceilings.clear();
        self.ids = self.committed_ids;
    }

    /// Reads through the batch's own pending writes, then those of batches not yet applied
    /// (newest first), then the keyspaces.
    fn get(&self, st: &Staged, ks: Ks, key: &[u8]) -> Result<Option<Slice>, StoreError> {
        if let Some(v) = st.staged(ks, key) {
            return Ok(v.clone());
        }
        for (_, writes) in self.inflight.iter().rev() {
            if let Some(v) = writes[ks as usize].get(key) {
                return Ok(v.clone());
            }
        }
        Ok(self.shared.ks.get(ks).get(key)?)
    }

    fn user_exists(&self, st: &Staged, id: UserId) -> Result<bool, StoreError> {
        Ok(self.get(st, Ks::Users, &user_key(id))?.is_some())
    }

    fn load_device(&self, st: &Staged, id: DeviceId) -> Result<Device, StoreError> {
        match self.get(st, Ks::Devices, &device_key(id))? {
            Some(v) => decode_device(&v),
            None => Err(StoreError::NotFound("device")),
        }
    }

    fn load_conversation(
        &mut self,
        st: &Staged,
        id: ConversationId,
    ) -> Result<Option<Arc<Conversation>>, StoreError> {
        if let Some(conv) = self.convs.get(&id) {
            return Ok(Some(conv.clone()));
        }
        let Some(v) = self.get(st, Ks::Convs, &conv_key(id))? else {
            return Ok(None);
        };
        let conv = Arc::new(decode_conversation(&v)?);
        self.convs.insert(id, conv.clone());
        Ok(Some(conv))
    }

    /// Stages a new or changed conversation record and caches it.
    fn put_conversation(&mut self, st: &mut Staged, conv: Conversation) -> Arc<Conversation> {
        st.put(Ks::Convs, conv_key(conv.id), encode_conversation(&conv));
        let conv = Arc::new(conv);
        self.convs.insert(conv.id, conv.clone());
        conv
    }

    /// The members of `conv`, ascending. Cached; a miss scans the conversation's member rows
    /// once (see `member_lists` for why the disk is up to date then).
    fn member_list(
        &mut self,
        st: &Staged,
        conv: &Conversation,
    ) -> Result<Arc<[UserId]>, StoreError> {
        if let Some(list) = self.member_lists.get(&conv.id) {
            return Ok(list.clone());
        }
        let list: Arc<[UserId]> = match conv.kind {
            ConversationKind::Direct => conv.members.as_slice().into(),
            ConversationKind::Group => {
                let mut ids = Vec::with_capacity(conv.member_count as usize);
                for guard in self.shared.ks.get(Ks::Members).prefix(conv_key(conv.id)) {
                    let key = guard.key()?;
                    ids.push(UserId(parse_pair(&key, "member key")?.1));
                }
                ids.into()
            }
        };
        // Staged updates of existing rows (read_seq, muted, role) are fine; what must not
        // happen is a staged join or leave that the list from disk does not reflect, because
        // membership changes keep the cache current themselves.
        debug_assert!(
            staged_membership_agrees(st, conv.id, &list),
            "member list of conversation {} loaded from disk disagrees with staged joins/leaves",
            conv.id
        );
        self.cache_member_list(conv.id, list.clone());
        Ok(list)
    }

    fn cache_member_list(&mut self, conv: ConversationId, list: Arc<[UserId]>) {
        self.cached_member_ids += list.len();
        if let Some(old) = self.member_lists.insert(conv, list) {
            self.cached_member_ids -= old.len();
        }
    }

    fn load_member(
        &self,
        st: &Staged,
        conv: ConversationId,
        user: UserId,
    ) -> Result<Option<Member>, StoreError> {
        let key = member_key(conv, user);
        self.get(st, Ks::Members, &key)?
            .map(|v| decode_member(&key, &v))
            .transpose()
    }

    fn put_member(&self, st: &mut Staged, m: &Member) {
        st.put(
            Ks::Members,
            member_key(m.conversation_id, m.user_id),
            encode_member(m),
        );
    }

    /// Stages a new member row and its `user_convs` entry (the caller updates the list cache).
    fn add_member_row(&self, st: &mut Staged, m: &Member) {
        self.put_member(st, m);
        st.put(
            Ks::UserConvs,
            user_conv_key(m.user_id, m.conversation_id),
            [],
        );
    }

    /// The newest message of `conv`. A miss loads from disk: nothing of this batch can be
    /// pending for a conversation without a cache entry, because staging a message sets one.
    fn tip(&mut self, conv: ConversationId) -> Result<Tip, StoreError> {
        if let Some(tip) = self.tips.get(&conv) {
            return Ok(*tip);
        }
        let last = last_message_of(self.shared.ks.get(Ks::Messages).prefix(conv_key(conv)))?;
        let tip = last.map_or(
            Tip {
                seq: Seq(0),
                ts_ms: 0,
            },
            |m| Tip {
                seq: m.seq,
                ts_ms: m.ts_ms,
            },
        );
        self.tips.insert(conv, tip);
        Ok(tip)
    }

    /// The head cursor of `user`'s inbox; same caching argument as [`Writer::tip`].
    fn head(&mut self, user: UserId) -> Result<Cursor, StoreError> {
        if let Some(head) = self.heads.get(&user) {
            return Ok(*head);
        }
        let head = inbox_head_of(self.shared.ks.get(Ks::Inbox).prefix(user_key(user)))?;
        self.heads.insert(user, head);
        Ok(head)
    }

    /// Appends an event to `user`'s inbox. `stored` is `payload` encoded (shared by fan-out).
    fn push_stored_event(
        &mut self,
        st: &mut Staged,
        user: UserId,
        stored: &[u8],
        payload: EventPayload,
    ) -> Result<(), StoreError> {
        let cursor = self.head(user)?.next();
        let ikey = inbox_key(user, cursor);
        debug_assert!(
            !matches!(self.shared.ks.get(Ks::Inbox).contains_key(ikey), Ok(true)),
            "cursor {cursor} of inbox {user} already on disk"
        );
        // One hash lookup for both the write and the check (this runs per member).
        let replaced = st.put(Ks::Inbox, ikey, stored);
        assert!(!replaced, "cursor {cursor} of inbox {user} staged twice");
        self.heads.insert(user, cursor);
        st.events.push(UserEvent {
            user_id: user,
            event: Event { cursor, payload },
        });
        Ok(())
    }

    /// Appends one (non-message) event to `user`'s inbox.
    fn push_event(
        &mut self,
        st: &mut Staged,
        user: UserId,
        payload: EventPayload,
    ) -> Result<(), StoreError> {
        let stored = encode_event(&StoredEvent::of(&payload));
        self.push_stored_event(st, user, &stored, payload)
    }

    /// Stages the next message of `conv` (whose `member_count` is already up to date) and its
    /// fan-out to `members`: one inbox event each for direct and small groups, a notice for
    /// larger groups. The dedup entry of a user message is the caller's.
    fn stage_message(
        &mut self,
        st: &mut Staged,
        conv: &Conversation,
        members: &Arc<[UserId]>,
        sender: UserId,
        origin: Origin,
    ) -> Result<Arc<Message>, StoreError> {
        debug_assert_eq!(members.len(), conv.member_count as usize);
        let tip = self.tip(conv.id)?;
        let seq = tip.seq.next();
        let key = message_key(conv.id, seq);
        debug_assert!(
            !matches!(self.shared.ks.get(Ks::Messages).contains_key(key), Ok(true)),
            "seq {seq} of conversation {} already on disk",
            conv.id
        );
        let (client_msg_id, text, system) = match origin {
            Origin::User(id, text) => (id, text, None),
            Origin::System(event) => (system_msg_id(conv.id, seq), String::new(), Some(event)),
        };
        let message = Arc::new(Message {
            conversation_id: conv.id,
            seq,
            sender_id: sender,
            client_msg_id,
            text,
            system,
            ts_ms: now_ms().max(tip.ts_ms),
        });
        let replaced = st.put(Ks::Messages, key, encode_message(&message));
        assert!(
            !replaced,
            "seq {seq} of conversation {} staged twice",
            conv.id
        );
        if writes_fanout(&self.policy, conv) {
            let stored = encode_event(&StoredEvent::Message(conv.id, seq));
            for &member in members.iter() {
                self.push_stored_event(
                    st,
                    member,
                    &stored,
                    EventPayload::Message(message.clone()),
                )?;
            }
        } else {
            st.notice(ConversationNotice {
                conversation_id: conv.id,
                last_seq: seq,
                members: members.clone(),
            });
        }
        self.tips.insert(
            conv.id,
            Tip {
                seq,
                ts_ms: message.ts_ms,
            },
        );
        st.messages_appended += 1;
        Ok(message)
    }

    /// The unrevoked devices whose token hashes to `hash`, ascending by id.
    fn token_holders(&self, st: &Staged, hash: &[u8; 32]) -> Result<Vec<DeviceId>, StoreError> {
        match self.get(st, Ks::Tokens, hash)? {
            Some(v) => decode_device_ids(&v),
            None => Ok(Vec::new()),
        }
    }

    fn create_user(&mut self, st: &mut Staged, c: &NewUser) -> Result<User, StoreError> {
        if self
            .get(st, Ks::Usernames, c.username.as_bytes())?
            .is_some()
        {
            return Err(StoreError::UsernameTaken);
        }
        let user = User {
            id: UserId(self.ids.next_user),
            username: c.username.clone(),
            password_hash: c.password_hash.clone(),
            created_ms: now_ms(),
        };
        self.ids.next_user += 1;
        st.put(
            Ks::Meta,
            META_NEXT_USER_ID,
            self.ids.next_user.to_be_bytes(),
        );
        st.put(Ks::Users, user_key(user.id), encode_user(&user));
        st.put(Ks::Usernames, c.username.as_bytes(), user.id.to_be_bytes());
        Ok(user)
    }

    fn create_device(&mut self, st: &mut Staged, c: &NewDevice) -> Result<Device, StoreError> {
        if !self.user_exists(st, c.user)? {
            return Err(StoreError::NotFound("user"));
        }
        let device = Device {
            id: DeviceId(self.ids.next_device),
            user_id: c.user,
            name: c.name.clone(),
            token_hash: c.token_hash,
            cursor: Cursor(0),
            revoked: false,
        };
        self.ids.next_device += 1;
        st.put(
            Ks::Meta,
            META_NEXT_DEVICE_ID,
            self.ids.next_device.to_be_bytes(),
        );
        st.put(Ks::Devices, device_key(device.id), encode_device(&device));
        // Normally the only holder of its token; if hashes ever collide, the oldest unrevoked
        // device wins, exactly as in MemoryStore.
        let mut holders = self.token_holders(st, &c.token_hash)?;
        holders.push(device.id);
        st.put(Ks::Tokens, c.token_hash, encode_device_ids(&holders));
        Ok(device)
    }

    fn revoke_device(&mut self, st: &mut Staged, id: DeviceId) -> Result<(), StoreError> {
        let mut device = self.load_device(st, id)?;
        if device.revoked {
            return Ok(());
        }
        device.revoked = true;
        st.put(Ks::Devices, device_key(id), encode_device(&device));
        let mut holders = self.token_holders(st, &device.token_hash)?;
        holders.retain(|&holder| holder != id);
        if holders.is_empty() {
            st.delete(Ks::Tokens, device.token_hash);
        } else {
            st.put(Ks::Tokens, device.token_hash, encode_device_ids(&holders));
        }
        Ok(())
    }

    fn ack_cursor(
        &mut self,
        st: &mut Staged,
        id: DeviceId,
        cursor: Cursor,
    ) -> Result<(), StoreError> {
        let mut device = self.load_device(st, id)?;
        if cursor > device.cursor {
            device.cursor = cursor;
            st.put(Ks::Devices, device_key(id), encode_device(&device));
        }
        Ok(())
    }

    /// Keeps the later of the recorded and the new time of each user.
    fn record_last_seen(&self, st: &mut Staged, seen: &[(UserId, u64)]) -> Result<(), StoreError> {
        for &(user, ts_ms) in seen {
            let key = user_key(user);
            let recorded = match self.get(st, Ks::LastSeen, &key)? {
                Some(v) => be_u64(&v, "last seen")?,
                None => 0,
            };
            if ts_ms > recorded {
                st.put(Ks::LastSeen, key, ts_ms.to_be_bytes());
            }
        }
        Ok(())
    }

    fn direct(
        &mut self,
        st: &mut Staged,
        a: UserId,
        b: UserId,
    ) -> Result<Conversation, StoreError> {
        if a == b {
            return Err(StoreError::NotFound("other user"));
        }
        for user in [a, b] {
            if !self.user_exists(st, user)? {
                return Err(StoreError::NotFound("user"));
            }
        }
        let key = direct_key(a, b);
        if let Some(id) = self.get(st, Ks::Directs, &key)? {
            let id = ConversationId(be_u64(&id, "directs value")?);
            return match self.load_conversation(st, id)? {
                Some(conv) => Ok((*conv).clone()),
                None => Err(StoreError::Corrupt(format!(
                    "direct pair points to missing conversation {id}"
                ))),
            };
        }
        let members = vec![a.min(b), a.max(b)];
        let conv = Conversation {
            id: ConversationId(self.ids.next_conversation),
            kind: ConversationKind::Direct,
            name: String::new(),
            owner: None,
            member_count: 2,
            members: members.clone(),
            created_ms: now_ms(),
        };
        self.ids.next_conversation += 1;
        st.put(
            Ks::Meta,
            META_NEXT_CONVERSATION_ID,
            self.ids.next_conversation.to_be_bytes(),
        );
        st.put(Ks::Directs, key, conv.id.to_be_bytes());
        for &user in &members {
            self.add_member_row(st, &new_member(conv.id, user, Role::Member, Seq(1), Seq(0)));
        }
        self.tips.insert(
            conv.id,
            Tip {
                seq: Seq(0),
                ts_ms: 0,
            },
        );
        self.cache_member_list(conv.id, members.into());
        Ok((*self.put_conversation(st, conv)).clone())
    }

    fn append(
        &mut self,
        st: &mut Staged,
        batch: &[AppendRequest],
    ) -> Result<Vec<Result<Appended, AppendError>>, StoreError> {
        batch.iter().map(|req| self.append_one(st, req)).collect()
    }

    /// Outer error: the disk failed. Inner error: this message is refused.
    fn append_one(
        &mut self,
        st: &mut Staged,
        req: &AppendRequest,
    ) -> Result<Result<Appended, AppendError>, StoreError> {
        // A resend is answered before any access check: the message exists, and a sender who
        // lost access since must still learn that it was stored, not that it failed.
        let dedup = dedup_key(req.sender_id, &req.client_msg_id);
        let id = req.client_msg_id.as_str().as_bytes();
        if !self.above_ceiling(req.sender_id, id)? {
            if let Some(found) = self.duplicate_of(st, &dedup)? {
                return Ok(Ok(found));
            }
        }
        let Some(conv) = self.load_conversation(st, req.conversation_id)? else {
            return Ok(Err(AppendError::NoConversation));
        };
        // The cached member list mirrors the member rows (including this batch's changes).
        let members = self.member_list(st, &conv)?;
        if members.binary_search(&req.sender_id).is_err() {
            return Ok(Err(AppendError::NotMember));
        }
        let message = self.stage_message(
            st,
            &conv,
            &members,
            req.sender_id,
            Origin::User(req.client_msg_id.clone(), req.text.clone()),
        )?;
        st.put(Ks::Dedup, &dedup, pair(conv.id.0, message.seq.0));
        self.raise_ceiling(req.sender_id, id)?;
        Ok(Ok(Appended {
            message,
            duplicate: false,
        }))
    }

    /// The message an idempotency key already names, answered as a duplicate.
    fn duplicate_of(&mut self, st: &Staged, dedup: &[u8]) -> Result<Option<Appended>, StoreError> {
        #[cfg(test)]
        {
            self.dedup_lookups += 1;
        }
        if let Some(target) = self.get(st, Ks::Dedup, dedup)? {
            let (cid, seq) = parse_pair(&target, "dedup value")?;
            let key = message_key(ConversationId(cid), Seq(seq));
            let Some(v) = self.get(st, Ks::Messages, &key)? else {
                return Err(StoreError::Corrupt(format!(
                    "dedup entry points to missing message {cid}/{seq}"
                )));
            };
            let message = Arc::new(decode_message(&key, &v)?);
            return Ok(Some(Appended {
                message,
                duplicate: true,
            }));
        }
        Ok(None)
    }

    /// True if `id` is above every client message id `sender` has used, so that no dedup key
    /// can exist for it.
    fn above_ceiling(&mut self, sender: UserId, id: &[u8]) -> Result<bool, StoreError> {
        Ok(id > &self.ceiling(sender)?[..])
    }

    /// Records that `sender` has used `id` (its dedup key is staged).
    fn raise_ceiling(&mut self, sender: UserId, id: &[u8]) -> Result<(), StoreError> {
        let ceiling = self.ceiling(sender)?;
        if id > &ceiling[..] {
            *ceiling = id.into();
        }
        Ok(())
    }

    /// `sender`'s ceiling. A miss loads it from disk: nothing of this batch or of one in
    /// flight can be pending for a sender without an entry, because staging a dedup key raises
    /// (and so sets) it, and entries are only dropped after every batch is applied.
    fn ceiling(&mut self, sender: UserId) -> Result<&mut Box<[u8]>, StoreError> {
        match self.ceilings.entry(sender) {
            Entry::Occupied(e) => Ok(e.into_mut()),
            Entry::Vacant(e) => {
                let prefix = user_key(sender);
                let last = self.shared.ks.get(Ks::Dedup).prefix(prefix).next_back();
                let ceiling: Box<[u8]> = match last {
                    Some(guard) => guard.key()?.get(prefix.len()..).unwrap_or_default().into(),
                    None => Box::default(),
                };
                Ok(e.insert(ceiling))
            }
        }
    }

    // --- Friends -----------------------------------------------------------------------------

    fn load_request(
        &self,
        st: &Staged,
        id: RequestId,
    ) -> Result<Option<FriendRequest>, StoreError> {
        self.get(st, Ks::FriendRequests, &request_key(id))?
            .map(|v| decode_friend_request(&v))
            .transpose()
    }

    /// The pending request from `from` to `to`, if any.
    fn pending_request(
        &self,
        st: &Staged,
        from: UserId,
        to: UserId,
    ) -> Result<Option<FriendRequest>, StoreError> {
        let Some(id) = self.get(st, Ks::RequestsPair, &request_pair_key(from, to))? else {
            return Ok(None);
        };
        let id = RequestId(be_u64(&id, "requests_pair value")?);
        match self.load_request(st, id)? {
            Some(r) => Ok(Some(r)),
            None => Err(StoreError::Corrupt(format!(
                "request pair {from}->{to} points to missing request {id}"
            ))),
        }
    }

    fn delete_request(&self, st: &mut Staged, r: &FriendRequest) {
        st.delete(Ks::FriendRequests, request_key(r.id));
        st.delete(Ks::RequestsIn, user_request_key(r.to, r.id));
        st.delete(Ks::RequestsOut, user_request_key(r.from, r.id));
        st.delete(Ks::RequestsPair, request_pair_key(r.from, r.to));
    }

    /// The direct conversation of a friendship (`user`'s row for `other`), if they are friends.
    fn friendship(
        &self,
        st: &Staged,
        user: UserId,
        other: UserId,
    ) -> Result<Option<ConversationId>, StoreError> {
        match self.get(st, Ks::Friends, &friend_key(user, other))? {
            Some(v) => Ok(Some(ConversationId(parse_pair(&v, "friends value")?.0))),
            None => Ok(None),
        }
    }

    fn request_friend(
        &mut self,
        st: &mut Staged,
        c: &NewFriendRequest,
    ) -> FriendResult<FriendRequest> {
        if c.from == c.to {
            return Ok(Err(FriendError::SelfRequest));
        }
        if !self.user_exists(st, c.to)? {
            return Ok(Err(FriendError::UnknownUser));
        }
        if !self.user_exists(st, c.from)? {
            return Err(StoreError::NotFound("user"));
        }
        if self.friendship(st, c.from, c.to)?.is_some() {
            return Ok(Err(FriendError::AlreadyFriends));
        }
        if let Some(pending) = self.pending_request(st, c.from, c.to)? {
            return Ok(Ok(pending));
        }
        let request = FriendRequest {
            id: RequestId(self.ids.next_request),
            from: c.from,
            to: c.to,
            message: c.message.clone(),
            ts_ms: now_ms(),
        };
        self.ids.next_request += 1;
        st.put(
            Ks::Meta,
            META_NEXT_REQUEST_ID,
            self.ids.next_request.to_be_bytes(),
        );
        st.put(
            Ks::FriendRequests,
            request_key(request.id),
            encode_friend_request(&request),
        );
        st.put(Ks::RequestsIn, user_request_key(c.to, request.id), []);
        st.put(Ks::RequestsOut, user_request_key(c.from, request.id), []);
        st.put(
            Ks::RequestsPair,
            request_pair_key(c.from, c.to),
            request.id.to_be_bytes(),
        );
        self.push_event(st, c.to, EventPayload::FriendRequest(request.clone()))?;
        Ok(Ok(request))
    }

    fn answer_friend(
        &mut self,
        st: &mut Staged,
        c: &FriendAnswer,
    ) -> FriendResult<Option<Conversation>> {
        let Some(request) = self.load_request(st, c.request)? else {
            return Ok(Err(FriendError::NotFound));
        };
        if request.to != c.user {
            return Ok(Err(FriendError::NotAddressee));
        }
        let (from, to) = (request.from, request.to);
        if !c.accept {
            self.delete_request(st, &request);
            return Ok(Ok(None));
        }
        if let Some(id) = self.friendship(st, from, to)? {
            self.delete_request(st, &request);
            return match self.load_conversation(st, id)? {
                Some(conv) => Ok(Ok(Some((*conv).clone()))),
                None => Err(StoreError::Corrupt(format!(
                    "friendship {from}-{to} points to missing conversation {id}"
                ))),
            };
        }
        let reverse = self.pending_request(st, to, from)?;
        let conv = self.direct(st, from, to)?;
        self.delete_request(st, &request);
        if let Some(reverse) = reverse {
            self.delete_request(st, &reverse);
        }
        let value = pair(conv.id.0, now_ms());
        st.put(Ks::Friends, friend_key(from, to), value);
        st.put(Ks::Friends, friend_key(to, from), value);
        for (user, other) in [(from, to), (to, from)] {
            self.push_event(
                st,
                user,
                EventPayload::FriendAdded {
                    user_id: other,
                    conversation_id: conv.id,
                },
            )?;
        }
        Ok(Ok(Some(conv)))
    }

    fn remove_friend(
        &mut self,
        st: &mut Staged,
        user: UserId,
        other: UserId,
    ) -> Result<bool, StoreError> {
        if self.friendship(st, user, other)?.is_none() {
            return Ok(false);
        }
        st.delete(Ks::Friends, friend_key(user, other));
        st.delete(Ks::Friends, friend_key(other, user));
        Ok(true)
    }

    // --- Groups ------------------------------------------------------------------------------

    /// The group `id` and the actor's membership, or why the operation is refused.
    fn group_and_actor(
        &mut self,
        st: &Staged,
        id: ConversationId,
        actor: UserId,
    ) -> GroupResult<(Arc<Conversation>, Member)> {
        let Some(conv) = self.load_conversation(st, id)? else {
            return Ok(Err(GroupError::NotFound));
        };
        if conv.kind != ConversationKind::Group {
            return Ok(Err(GroupError::NotGroup));
        }
        match self.load_member(st, id, actor)? {
            Some(m) => Ok(Ok((conv, m))),
            None => Ok(Err(GroupError::NotMember)),
        }
    }

    /// [`Writer::group_and_actor`] for what only owners and admins may do.
    fn group_admin(
        &mut self,
        st: &Staged,
        id: ConversationId,
        actor: UserId,
    ) -> GroupResult<(Arc<Conversation>, Member)> {
        let (conv, member) = or_refuse!(self.group_and_actor(st, id, actor)?);
        if member.role == Role::Member {
            return Ok(Err(GroupError::Forbidden));
        }
        Ok(Ok((conv, member)))
    }

    fn create_group(&mut self, st: &mut Staged, c: &NewGroup) -> GroupResult<Conversation> {
        let mut ids = c.members.clone();
        ids.push(c.owner);
        ids.sort_unstable();
        ids.dedup();
        if ids.len() > self.policy.members_max as usize {
            return Ok(Err(GroupError::GroupFull {
                max: self.policy.members_max,
            }));
        }
        for &user in &ids {
            if !self.user_exists(st, user)? {
                return Ok(Err(GroupError::UnknownUser(user)));
            }
        }
        let conv = Conversation {
            id: ConversationId(self.ids.next_conversation),
            kind: ConversationKind::Group,
            name: c.name.clone(),
            owner: Some(c.owner),
            member_count: ids.len() as u32,
            members: Vec::new(),
            created_ms: now_ms(),
        };
        self.ids.next_conversation += 1;
        st.put(
            Ks::Meta,
            META_NEXT_CONVERSATION_ID,
            self.ids.next_conversation.to_be_bytes(),
        );
        for &user in &ids {
            let role = if user == c.owner {
                Role::Owner
            } else {
                Role::Member
            };
            self.add_member_row(st, &new_member(conv.id, user, role, Seq(1), Seq(1)));
        }
        let members: Arc<[UserId]> = ids.into();
        self.cache_member_list(conv.id, members.clone());
        self.tips.insert(
            conv.id,
            Tip {
                seq: Seq(0),
                ts_ms: 0,
            },
        );
        let conv = self.put_conversation(st, conv);
        let event = SystemEvent::GroupCreated {
            actor: c.owner,
            name: c.name.clone(),
            members: members.to_vec(),
        };
        self.stage_message(st, &conv, &members, c.owner, Origin::System(event))?;
        for &user in members.iter() {
            self.push_event(
                st,
                user,
                EventPayload::GroupJoined {
                    conversation_id: conv.id,
                },
            )?;
        }
        Ok(Ok((*conv).clone()))
    }

    fn add_members(
        &mut self,
        st: &mut Staged,
        c: &GroupCmd<Vec<UserId>>,
    ) -> GroupResult<Option<Arc<Message>>> {
        let (conv, _) = or_refuse!(self.group_admin(st, c.conversation, c.actor)?);
        let members = self.member_list(st, &conv)?;
        let mut new = c.args.clone();
        new.sort_unstable();
        new.dedup();
        new.retain(|u| members.binary_search(u).is_err());
        for &user in &new {
            if !self.user_exists(st, user)? {
                return Ok(Err(GroupError::UnknownUser(user)));
            }
        }
        if new.is_empty() {
            return Ok(Ok(None));
        }
        let count = members.len() + new.len();
        if count > self.policy.members_max as usize {
            return Ok(Err(GroupError::GroupFull {
                max: self.policy.members_max,
            }));
        }
        let joined = self.tip(conv.id)?.seq.next();
        for &user in &new {
            self.add_member_row(st, &new_member(conv.id, user, Role::Member, joined, joined));
        }
        let mut all = Vec::with_capacity(count);
        all.extend_from_slice(&members);
        all.extend_from_slice(&new);
        all.sort_unstable();
        let all: Arc<[UserId]> = all.into();
        self.cache_member_list(conv.id, all.clone());
        let conv = self.put_conversation(
            st,
            Conversation {
                member_count: count as u32,
                ..(*conv).clone()
            },
        );
        let event = SystemEvent::MembersAdded {
            actor: c.actor,
            users: new.clone(),
        };
        let message = self.stage_message(st, &conv, &all, c.actor, Origin::System(event))?;
        debug_assert_eq!(message.seq, joined);
        for &user in &new {
            self.push_event(
                st,
                user,
                EventPayload::GroupJoined {
                    conversation_id: conv.id,
                },
            )?;
        }
        Ok(Ok(Some(message)))
    }

    fn remove_member(
        &mut self,
        st: &mut Staged,
        c: &GroupCmd<UserId>,
    ) -> GroupResult<Vec<Arc<Message>>> {
        let (conv, actor) = or_refuse!(self.group_and_actor(st, c.conversation, c.actor)?);
        let user = c.args;
        let target = if user == c.actor {
            actor.clone()
        } else {
            match self.load_member(st, conv.id, user)? {
                Some(m) => m,
                None => return Ok(Err(GroupError::NotMember)),
            }
        };
        let event = or_refuse!(removal_event(&actor, &target));
        let members = self.member_list(st, &conv)?;
        let remaining: Arc<[UserId]> = members.iter().copied().filter(|&u| u != user).collect();
        st.delete(Ks::Members, member_key(conv.id, user));
        st.delete(Ks::UserConvs, user_conv_key(user, conv.id));
        self.cache_member_list(conv.id, remaining.clone());
        let owner_left = target.role == Role::Owner;
        let mut updated = Conversation {
            member_count: remaining.len() as u32,
            owner: if owner_left { None } else { conv.owner },
            ..(*conv).clone()
        };
        let mut out =
            vec![self.stage_message(st, &updated, &remaining, c.actor, Origin::System(event))?];
        self.push_event(
            st,
            user,
            EventPayload::GroupLeft {
                conversation_id: conv.id,
            },
        )?;
        if owner_left && !remaining.is_empty() {
            // A handover reads every remaining member row (point reads through this batch's
            // writes); owners leaving a 10,000-member group are rare enough for that.
            let mut rows = Vec::with_capacity(remaining.len());
            for &u in remaining.iter() {
                match self.load_member(st, conv.id, u)? {
                    Some(m) => rows.push(m),
                    None => {
                        return Err(StoreError::Corrupt(format!(
                            "member list of conversation {} names {u} without a member row",
                            conv.id
                        )))
                    }
                }
            }
            let Some(mut heir) = successor(&rows).cloned() else {
                unreachable!("remaining is not empty");
            };
            heir.role = Role::Owner;
            self.put_member(st, &heir);
            updated.owner = Some(heir.user_id);
            let event = SystemEvent::OwnerChanged { user: heir.user_id };
            out.push(self.stage_message(
                st,
                &updated,
                &remaining,
                c.actor,
                Origin::System(event),
            )?);
        }
        self.put_conversation(st, updated);
        Ok(Ok(out))
    }

    fn set_role(
        &mut self,
        st: &mut Staged,
        c: &GroupCmd<(UserId, Role)>,
    ) -> GroupResult<Arc<Message>> {
        let (conv, actor) = or_refuse!(self.group_and_actor(st, c.conversation, c.actor)?);
        let (user, role) = c.args;
        if actor.role != Role::Owner {
            return Ok(Err(GroupError::Forbidden));
        }
        let Some(mut target) = self.load_member(st, conv.id, user)? else {
            return Ok(Err(GroupError::NotMember));
        };
        if target.role == Role::Owner || role == Role::Owner {
            return Ok(Err(GroupError::Forbidden));
        }
        let members = self.member_list(st, &conv)?;
        target.role = role;
        self.put_member(st, &target);
        let event = SystemEvent::RoleChanged {
            actor: c.actor,
            user,
            role,
        };
        Ok(Ok(self.stage_message(
            st,
            &conv,
            &members,
            c.actor,
            Origin::System(event),
        )?))
    }

    fn rename_group(&mut self, st: &mut Staged, c: &GroupCmd<String>) -> GroupResult<Arc<Message>> {
        let (conv, _) = or_refuse!(self.group_admin(st, c.conversation, c.actor)?);
        let members = self.member_list(st, &conv)?;
        let conv = self.put_conversation(
            st,
            Conversation {
                name: c.args.clone(),
                ..(*conv).clone()
            },
        );
        let event = SystemEvent::Renamed {
            actor: c.actor,
            name: c.args.clone(),
        };
        Ok(Ok(self.stage_message(
            st,
            &conv,
            &members,
            c.actor,
            Origin::System(event),
        )?))
    }

    fn mark_read(&mut self, st: &mut Staged, c: &GroupCmd<Seq>) -> GroupResult<Seq> {
        let Some(conv) = self.load_conversation(st, c.conversation)? else {
            return Ok(Err(GroupError::NotMember));
        };
        let Some(mut member) = self.load_member(st, conv.id, c.actor)? else {
            return Ok(Err(GroupError::NotMember));
        };
        let last = self.tip(conv.id)?.seq;
        let read = member.read_seq.max(c.args.min(last));
        if read == member.read_seq {
            return Ok(Ok(read));
        }
        member.read_seq = read;
        self.put_member(st, &member);
        self.push_event(
            st,
            c.actor,
            EventPayload::Read {
                conversation_id: conv.id,
                read_seq: read,
            },
        )?;
        if pushes_receipts(&self.policy, &conv) {
            // Larger groups get no receipt events, so only these need the member list.
            let members = self.member_list(st, &conv)?;
            let receipt = EventPayload::Receipt {
                conversation_id: conv.id,
                user_id: c.actor,
                read_seq: read,
            };
            let stored = encode_event(&StoredEvent::of(&receipt));
            for &other in members.iter().filter(|&&u| u != c.actor) {
                self.push_stored_event(st, other, &stored, receipt.clone())?;
            }
        }
        Ok(Ok(read))
    }

    fn set_muted(&mut self, st: &mut Staged, c: &GroupCmd<bool>) -> GroupResult<()> {
        let Some(mut member) = self.load_member(st, c.conversation, c.actor)? else {
            return Ok(Err(GroupError::NotMember));
        };
        if member.muted != c.args {
            member.muted = c.args;
            self.put_member(st, &member);
        }
        Ok(Ok(()))
    }
}

/// Whether every staged member row of `conv` agrees with `list`: a staged insert or update for
/// a listed user, a staged delete for an unlisted one.
fn staged_membership_agrees(st: &Staged, conv: ConversationId, list: &[UserId]) -> bool {
    let prefix = conv_key(conv);
    st.writes[Ks::Members as usize]
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .all(|(k, v)| match parse_pair(k, "member key") {
            Ok((_, user)) => list.contains(&UserId(user)) == v.is_some(),
            Err(_) => false,
        })
}

#[cfg(test)]
mod tests {
    //! Drives `Writer::process` directly, so that several ops are guaranteed to share a batch.

    use magpie_core::ClientMsgId;

    use super::*;
    use crate::conformance::RecordingSink;
    use crate::fjall::FjallConfig;

    struct Harness {
        _dir: Option<tempfile::TempDir>,
        shared: Arc<Shared>,
        sink: Arc<RecordingSink>,
        writer: Writer,
    }

    fn harness() -> Harness {
        harness_with(GroupPolicy::default())
    }

    fn harness_with(policy: GroupPolicy) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut h = harness_at(dir.path(), policy);
        h._dir = Some(dir);
        h
    }

    /// A harness on a data dir the caller owns, so that a test can reopen it.
    fn harness_at(path: &std::path::Path, policy: GroupPolicy) -> Harness {
        let (shared, ids) = Shared::open(&FjallConfig::for_tests(path)).unwrap();
        let sink = RecordingSink::new();
        let writer = Writer::new(
            shared.clone(),
            sink.clone(),
            policy,
            1024,
            std::time::Duration::ZERO,
            ids,
        )
        .unwrap();
        Harness {
            _dir: None,
            shared,
            sink,
            writer,
        }
    }

    type Rx<T> = oneshot::Receiver<Result<T, StoreError>>;

    fn op<C, T>(cmd: C, wrap: fn(Pending<C, T>) -> WriteOp) -> (WriteOp, Rx<T>) {
        let (tx, rx) = oneshot::channel();
        (wrap(Pending::new(cmd, tx)), rx)
    }

    fn user(name: &str) -> (WriteOp, Rx<User>) {
        op(
            NewUser {
                username: name.into(),
                password_hash: "h".into(),
            },
            WriteOp::CreateUser,
        )
    }

    fn append(
        conv: u64,
        sender: u64,
        id: &str,
    ) -> (WriteOp, Rx<Vec<Result<Appended, AppendError>>>) {
        let req = AppendRequest {
            conversation_id: ConversationId(conv),
            sender_id: UserId(sender),
            client_msg_id: ClientMsgId::new(id).unwrap(),
            text: format!("text {id}"),
        };
        op(vec![req], WriteOp::Append)
    }

    fn got<T>(mut rx: Rx<T>) -> Result<T, StoreError> {
        rx.try_recv().expect("answered after process returns")
    }

    fn appended(rx: Rx<Vec<Result<Appended, AppendError>>>) -> (u64, bool) {
        let a = got(rx).unwrap().remove(0).unwrap();
        (a.message.seq.0, a.duplicate)
    }

    impl Harness {
        fn run(&mut self, ops: Vec<WriteOp>) {
            let mut ops = ops;
            self.writer.process(&mut ops);
            assert!(ops.is_empty());
            self.writer.settle();
        }
    }

    #[test]
    fn one_batch_sees_its_own_writes() {
        let mut h = harness();
        let (u1, r1) = user("ann");
        let (u2, r2) = user("ann");
        let (u3, r3) = user("bob");
        let (dev, rdev) = op(
            NewDevice {
                user: UserId(2),
                name: "d".into(),
                token_hash: [1; 32],
            },
            WriteOp::CreateDevice,
        );
        let (ack, rack) = op((DeviceId(1), Cursor(4)), WriteOp::AckCursor);
        let (rev, rrev) = op(DeviceId(1), WriteOp::RevokeDevice);
        let (dir, rdir) = op((UserId(2), UserId(1)), WriteOp::DirectConversation);
        let (dir2, rdir2) = op((UserId(1), UserId(2)), WriteOp::DirectConversation);
        let (a1, ra1) = append(1, 1, "x");
        let (a2, ra2) = append(1, 2, "y");
        let (a3, ra3) = append(1, 1, "x");
        h.run(vec![u1, u2, u3, dev, ack, rev, dir, dir2, a1, a2, a3]);

        assert_eq!(got(r1).unwrap().id, UserId(1));
        assert!(matches!(got(r2), Err(StoreError::UsernameTaken)));
        assert_eq!(
            got(r3).unwrap().id,
            UserId(2),
            "the refused name burnt no id"
        );
        assert_eq!(got(rdev).unwrap().id, DeviceId(1));
        got(rack).unwrap();
        got(rrev).unwrap();
        assert_eq!(got(rdir).unwrap().id, ConversationId(1));
        assert_eq!(
            got(rdir2).unwrap().id,
            ConversationId(1),
            "same pair in one batch, one conversation"
        );
        assert_eq!(appended(ra1), (1, false));
        assert_eq!(
            appended(ra2),
            (2, false),
            "consecutive seqs within one batch"
        );
        assert_eq!(
            appended(ra3),
            (1, true),
            "a duplicate within one batch is detected"
        );

        let events = h.sink.take();
        let ann: Vec<u64> = events
            .iter()
            .filter(|e| e.user_id == UserId(1))
            .map(|e| e.event.cursor.0)
            .collect();
        assert_eq!(ann, vec![1, 2]);
        assert_eq!(events.len(), 4);

        // Everything is durable and visible to readers at the new snapshot.
        let snap = h.shared.durable.read().clone();
        let view = crate::fjall::read::View {
            ks: &h.shared.ks,
            snap: &snap,
        };
        let d = view.device(DeviceId(1)).unwrap().unwrap();
        assert_eq!((d.cursor, d.revoked), (Cursor(4), true));
        assert_eq!(view.device_by_token(&[1; 32]).unwrap(), None);
        assert_eq!(view.inbox_head(UserId(2)).unwrap(), Cursor(2));
        assert_eq!(
            h.writer.committed_ids,
            Counters {
                next_user: 3,
                next_device: 2,
                next_conversation: 2,
                next_request: 1,
            }
        );
    }

    fn group(owner: u64, members: &[u64]) -> (WriteOp, Rx<Result<Conversation, GroupError>>) {
        op(
            NewGroup {
                owner: UserId(owner),
                name: "g".into(),
                members: members.iter().copied().map(UserId).collect(),
            },
            WriteOp::CreateGroup,
        )
    }

    fn group_cmd<A>(actor: u64, conv: u64, args: A) -> GroupCmd<A> {
        GroupCmd {
            actor: UserId(actor),
            conversation: ConversationId(conv),
            args,
        }
    }

    /// Users 1..=n, each in its own batch.
    fn users(h: &mut Harness, n: usize) {
        for i in 0..n {
            let (u, r) = user(&format!("user{i}"));
            h.run(vec![u]);
            got(r).unwrap();
        }
    }

    #[test]
    fn a_read_fanout_append_writes_two_keys_and_reads_only_caches() {
        let policy = GroupPolicy {
            members_max: 10,
            fanout_write_max: 2,
            receipt_events_max: 2,
        };
        let mut h = harness_with(policy);
        users(&mut h, 4);
        let (g, rg) = group(1, &[2, 3, 4]);
        h.run(vec![g]);
        let conv = got(rg).unwrap().unwrap();
        h.sink.take();
        let cached = h.writer.member_lists[&conv.id].clone();
        assert_eq!(cached.len(), 4);

        let (a, _ra) = append(conv.id.0, 2, "x");
        let mut ops = vec![a];
        let (st, _) = h.writer.stage_all(&mut ops).unwrap();
        assert_eq!(st.len(), 2, "the message and its dedup key, nothing else");
        assert!(st.events.is_empty());
        let (_, notice) = &st.notices[&conv.id];
        assert_eq!(notice.last_seq, Seq(2));
        assert!(
            Arc::ptr_eq(&notice.members, &cached),
            "the cached member list, not a scan"
        );
        // The same op committed for real; a system message needs no dedup key either.
        h.run(ops);
        let (r, _rr) = op(
            group_cmd(1, conv.id.0, "h".to_string()),
            WriteOp::RenameGroup,
        );
        let mut ops = vec![r];
        let (st, _) = h.writer.stage_all(&mut ops).unwrap();
        assert_eq!(st.len(), 2, "the message and the conversation record");
        assert!(
            st.writes[Ks::Dedup as usize].is_empty(),
            "no idempotency key"
        );
        h.run(ops);
    }

    #[test]
    fn ops_that_fan_out_past_the_staging_bound_are_split_into_batches_in_order() {
        let mut h = harness();
        let members = 400u64;
        for i in 0..members {
            let (u, r) = user(&format!("u{i}"));
            h.run(vec![u]);
            got(r).unwrap();
        }
        let (g, rg) = group(1, &(2..=members).collect::<Vec<_>>());
        h.run(vec![g]);
        let conv = got(rg).unwrap().unwrap().id;
        // Each op: 100 messages × (message + dedup key + 400 inbox rows + 400 events), about
        // 80,000 staged, more than `BATCH_STAGED_MAX`: three ops need three batches.
        let sends = 100;
        let appends: Vec<_> = (0..3)
            .map(|o| {
                let reqs = (0..sends)
                    .map(|i| AppendRequest {
                        conversation_id: conv,
                        sender_id: UserId(1),
                        client_msg_id: ClientMsgId::new(format!("o{o}-{i}")).unwrap(),
                        text: "x".into(),
                    })
                    .collect::<Vec<_>>();
                op(reqs, WriteOp::Append)
            })
            .collect();
        let sealed_before = h.writer.sealed;
        let (ops, rxs): (Vec<_>, Vec<_>) = appends.into_iter().unzip();
        h.run(ops);
        assert_eq!(h.writer.sealed - sealed_before, 3, "one batch per op");
        let seqs: Vec<u64> = rxs
            .into_iter()
            .flat_map(|rx| got(rx).unwrap())
            .map(|a| a.unwrap().message.seq.0)
            .collect();
        // Seq 1 is the group's creation; the sends follow in op order, gap-free.
        assert_eq!(seqs, (2..2 + 3 * sends as u64).collect::<Vec<_>>());
    }

    /// A sink that checks, when told of a removal, that readers are held off at that moment.
    #[derive(Default)]
    struct LockProbe {
        shared: std::sync::OnceLock<Arc<Shared>>,
        /// (removals seen, removals seen while the durable snapshot was write-locked)
        calls: parking_lot::Mutex<(u32, u32)>,
    }

    impl CommitSink for LockProbe {
        fn committed(&self, _: &[UserEvent], _: &[ConversationNotice]) {}

        fn members_removed(&self) {
            let locked = self
                .shared
                .get()
                .is_some_and(|s| s.durable.try_read().is_none());
            let mut calls = self.calls.lock();
            calls.0 += 1;
            calls.1 += u32::from(locked);
        }
    }

    #[test]
    fn a_removal_is_announced_before_it_is_readable_and_only_a_removal() {
        let dir = tempfile::tempdir().unwrap();
        let (shared, ids) = Shared::open(&FjallConfig::for_tests(dir.path())).unwrap();
        let probe = Arc::new(LockProbe::default());
        assert!(probe.shared.set(shared.clone()).is_ok());
        let policy = GroupPolicy::default();
        let mut writer = Writer::new(
            shared,
            probe.clone(),
            policy,
            1024,
            std::time::Duration::ZERO,
            ids,
        )
        .unwrap();
        let mut run = |ops: Vec<WriteOp>| {
            let mut ops = ops;
            writer.process(&mut ops);
            writer.settle();
        };
        for i in 0..3 {
            let (u, r) = user(&format!("user{i}"));
            run(vec![u]);
            got(r).unwrap();
        }
        let (g, rg) = group(1, &[2, 3]);
        run(vec![g]);
        let conv = got(rg).unwrap().unwrap().id;
        let (a, ra) = append(conv.0, 2, "hello");
        run(vec![a]);
        got(ra).unwrap();
        assert_eq!(
            *probe.calls.lock(),
            (0, 0),
            "creating and sending remove no one"
        );
        let (rm, rrm) = op(group_cmd(1, conv.0, UserId(3)), WriteOp::RemoveMember);
        run(vec![rm]);
        got(rrm).unwrap().unwrap();
        assert_eq!(
            *probe.calls.lock(),
            (1, 1),
            "one removal, announced while readers were held off"
        );
    }

    #[test]
    fn membership_changes_are_seen_by_later_ops_of_the_same_batch() {
        let policy = GroupPolicy {
            members_max: 10,
            fanout_write_max: 2,
            receipt_events_max: 2,
        };
        let mut h = harness_with(policy);
        users(&mut h, 5);
        let (g1, rg1) = group(1, &[2]);
        let (g2, rg2) = group(3, &[4, 5]);
        h.run(vec![g1, g2]);
        let (c1, c2) = (got(rg1).unwrap().unwrap().id, got(rg2).unwrap().unwrap().id);
        h.sink.take();
        h.sink.take_notices();

        // Start from a cold cache so the first op of the batch loads the lists from disk.
        h.writer.reset_caches();
        let (add, radd) = op(group_cmd(1, c1.0, vec![UserId(5)]), WriteOp::AddMembers);
        let (a1, ra1) = append(c1.0, 5, "new-member-speaks");
        let (a2, ra2) = append(c2.0, 4, "other-group");
        let (rm, rrm) = op(group_cmd(3, c2.0, UserId(4)), WriteOp::RemoveMember);
        let (a3, ra3) = append(c2.0, 4, "too-late");
        let (a4, ra4) = append(c1.0, 2, "still-small");
        h.run(vec![add, a1, a2, rm, a3, a4]);

        assert_eq!(got(radd).unwrap().unwrap().unwrap().seq, Seq(2));
        assert_eq!(
            appended(ra1),
            (3, false),
            "a member added earlier in the batch"
        );
        assert_eq!(appended(ra2), (2, false));
        assert_eq!(got(rrm).unwrap().unwrap().len(), 1);
        assert_eq!(
            got(ra3).unwrap().remove(0).map(|_| ()),
            Err(AppendError::NotMember),
            "a member removed earlier in the batch"
        );
        assert_eq!(appended(ra4), (4, false));

        // c1 went from 2 to 3 members (read fan-out), c2 from 3 to 2 (write fan-out).
        let notices = h.sink.take_notices();
        let got_notices: Vec<(ConversationId, u64, Vec<UserId>)> = notices
            .iter()
            .map(|n| (n.conversation_id, n.last_seq.0, n.members.to_vec()))
            .collect();
        assert_eq!(
            got_notices,
            vec![
                (c2, 2, vec![UserId(3), UserId(4), UserId(5)]),
                (c1, 4, vec![UserId(1), UserId(2), UserId(5)]),
            ],
            "one per conversation, the last seq, ordered by their last message"
        );
        let events: Vec<(u64, String)> = h
            .sink
            .take()
            .iter()
            .map(|e| {
                let what = match &e.event.payload {
                    EventPayload::Message(m) => format!("msg {}/{}", m.conversation_id, m.seq),
                    EventPayload::GroupJoined { conversation_id } => {
                        format!("joined {conversation_id}")
                    }
                    EventPayload::GroupLeft { conversation_id } => {
                        format!("left {conversation_id}")
                    }
                    other => format!("{other:?}"),
                };
                (e.user_id.0, what)
            })
            .collect();
        assert_eq!(
            events,
            vec![
                (5, format!("joined {c1}")),
                (3, format!("msg {c2}/3")),
                (5, format!("msg {c2}/3")),
                (4, format!("left {c2}")),
            ],
            "c2's removal went out by write fan-out to the two remaining members"
        );
    }

    #[test]
    fn a_corrupt_record_fails_only_its_op() {
        let mut h = harness();
        h.shared
            .ks
            .get(Ks::Devices)
            .insert(device_key(DeviceId(5)), [9u8, 9, 9])
            .unwrap();
        let (u1, r1) = user("ann");
        let (ack, rack) = op((DeviceId(5), Cursor(1)), WriteOp::AckCursor);
        let (u2, r2) = user("bob");
        h.run(vec![u1, ack, u2]);
        assert!(matches!(got(rack), Err(StoreError::Corrupt(_))));
        assert_eq!(got(r1).unwrap().id, UserId(1));
        assert_eq!(
            got(r2).unwrap().id,
            UserId(2),
            "restaged without the failed op, ids unchanged"
        );
    }

    #[test]
    fn staging_reads_batches_the_commit_thread_has_not_applied_yet() {
        let mut h = harness();
        h.writer.progress.hold(true);
        let (u1, r1) = user("ann");
        let (u2, r2) = user("bob");
        let (dir, rdir) = op((UserId(1), UserId(2)), WriteOp::DirectConversation);
        let (a1, ra1) = append(1, 1, "x");
        h.writer.process(&mut vec![u1, u2, dir, a1]);
        assert_eq!(h.writer.inflight.len(), 1, "batch 1 is an overlay");

        let (u3, r3) = user("ann");
        let (a2, ra2) = append(1, 1, "x");
        let (a3, ra3) = append(1, 2, "y");
        h.writer.process(&mut vec![u3, a2, a3]);
        // Nothing but duplicates: no writes, yet it must wait for the batches before it.
        let (a4, mut ra4) = append(1, 2, "y");
        h.writer.process(&mut vec![a4]);
        assert_eq!(h.writer.inflight.len(), 2);
        assert_eq!(h.writer.progress.applied(), 0);
        assert!(
            ra4.try_recv().is_err(),
            "a duplicate is not acknowledged before its original is durable"
        );
        assert!(
            h.sink.take().is_empty(),
            "nothing announced before the fsync"
        );

        h.writer.progress.hold(false);
        h.writer.settle();
        assert_eq!(got(r1).unwrap().id, UserId(1));
        assert_eq!(got(r2).unwrap().id, UserId(2));
        assert_eq!(got(rdir).unwrap().id, ConversationId(1));
        assert_eq!(appended(ra1), (1, false));
        assert!(
            matches!(got(r3), Err(StoreError::UsernameTaken)),
            "the name taken by the unapplied batch is seen"
        );
        assert_eq!(
            appended(ra2),
            (1, true),
            "the idempotency key of the unapplied batch is seen"
        );
        assert_eq!(appended(ra3), (2, false), "seqs continue across batches");
        assert_eq!(appended(ra4), (2, true));
        let cursors: Vec<(u64, u64)> = h
            .sink
            .take()
            .iter()
            .map(|e| (e.user_id.0, e.event.cursor.0))
            .collect();
        assert_eq!(cursors, vec![(1, 1), (2, 1), (1, 2), (2, 2)]);

        // The next batch drops the applied overlays and reads the keyspaces.
        let (a5, ra5) = append(1, 1, "x");
        h.run(vec![a5]);
        assert!(h.writer.inflight.is_empty());
        assert_eq!(appended(ra5), (1, true));
    }

    #[test]
    fn a_commit_group_is_one_engine_batch_and_the_last_write_of_a_key_wins() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut h = harness_at(dir.path(), GroupPolicy::default());
            let seqno = h.shared.db.seqno();
            // Held, the commit thread takes both batches as one group.
            h.writer.progress.hold(true);
            let (u1, r1) = user("ann");
            h.writer.process(&mut vec![u1]);
            let (u2, r2) = user("bob");
            h.writer.process(&mut vec![u2]);
            h.writer.progress.hold(false);
            h.writer.settle();
            assert_eq!(got(r1).unwrap().id, UserId(1));
            assert_eq!(got(r2).unwrap().id, UserId(2));
            assert_eq!(
                h.shared.db.seqno(),
                seqno + 1,
                "two batches of one group are one fjall batch (one journal entry)"
            );
        }
        // Both batches wrote the user id counter; the second batch's value must be the one
        // kept, or the next user would be given bob's id.
        let mut h = harness_at(dir.path(), GroupPolicy::default());
        let (u3, r3) = user("carl");
        h.run(vec![u3]);
        assert_eq!(got(r3).unwrap().id, UserId(3));
    }

    /// Users 1 and 2 and their direct conversation (id 1).
    fn two_users_and_a_direct(h: &mut Harness) {
        users(h, 2);
        let (dir, rdir) = op((UserId(1), UserId(2)), WriteOp::DirectConversation);
        h.run(vec![dir]);
        assert_eq!(got(rdir).unwrap().id, ConversationId(1));
    }

    #[test]
    fn ids_above_the_senders_ceiling_skip_the_lookup_and_every_resend_is_found() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut h = harness_at(dir.path(), GroupPolicy::default());
            two_users_and_a_direct(&mut h);
            let (b, rb) = append(1, 1, "b");
            let (c, rc) = append(1, 1, "c");
            h.run(vec![b, c]);
            assert_eq!((appended(rb), appended(rc)), ((1, false), (2, false)));
            assert_eq!(h.writer.dedup_lookups, 0, "increasing ids need no lookup");

            // Below the ceiling: looked up, and new or a duplicate as the index says.
            let (a, ra) = append(1, 1, "a");
            let (c2, rc2) = append(1, 1, "c");
            h.run(vec![a, c2]);
            assert_eq!((appended(ra), appended(rc2)), ((3, false), (2, true)));
            assert_eq!(h.writer.dedup_lookups, 2);
            // Another sender has a ceiling of its own.
            let (a2, ra2) = append(1, 2, "a");
            h.run(vec![a2]);
            assert_eq!(appended(ra2), (4, false));
            assert_eq!(h.writer.dedup_lookups, 2);

            // A resend while the original is still in flight (not yet in the keyspaces).
            h.writer.progress.hold(true);
            let (d, rd) = append(1, 1, "d");
            h.writer.process(&mut vec![d]);
            let (d2, rd2) = append(1, 1, "d");
            h.writer.process(&mut vec![d2]);
            h.writer.progress.hold(false);
            h.writer.settle();
            assert_eq!((appended(rd), appended(rd2)), ((5, false), (5, true)));

            // Dropped caches reload the ceiling from the keyspace.
            h.writer.reset_caches();
            let (d3, rd3) = append(1, 1, "d");
            let (e, re) = append(1, 1, "e");
            h.run(vec![d3, e]);
            assert_eq!((appended(rd3), appended(re)), ((5, true), (6, false)));
            assert_eq!(
                h.writer.dedup_lookups, 4,
                "d twice; e is above the reloaded d"
            );
        }
        // So does a restart.
        let mut h = harness_at(dir.path(), GroupPolicy::default());
        let (e2, re2) = append(1, 1, "e");
        let (f, rf) = append(1, 1, "f");
        h.run(vec![e2, f]);
        assert_eq!((appended(re2), appended(rf)), ((6, true), (7, false)));
        assert_eq!(h.writer.dedup_lookups, 1);
    }

    #[test]
    fn mixed_ids_resends_cache_drops_and_batches_never_store_an_id_twice() {
        let mut h = harness();
        two_users_and_a_direct(&mut h);
        // Deterministic pseudo-random choices (a 64-bit LCG, and an ordered model map), so a
        // failure replays.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: u64| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) % n
        };
        // (sender, id) → seq of every stored message.
        let mut model: std::collections::BTreeMap<(u64, String), u64> = Default::default();
        let mut seq = 0;
        let mut clock = 0u64;
        let mut expect = Vec::new();
        let (mut held_pairs, mut evictions) = (0, 0);
        for round in 0..80 {
            let mut ops = Vec::new();
            // (sender, id, seq) of the ids this round stores, in op order.
            let mut stored = Vec::new();
            for _ in 0..=next(6) {
                let sender = 1 + next(2);
                let id = match next(4) {
                    // Time-ordered, mostly above the ceiling.
                    0 | 1 => {
                        clock += 1 + next(3);
                        format!("t{clock:08}")
                    }
                    // A stored id of this sender again (a resend), or a random new one.
                    2 => {
                        let mine: Vec<&String> = model
                            .keys()
                            .filter(|(s, _)| *s == sender)
                            .map(|(_, id)| id)
                            .collect();
                        match mine.len() {
                            0 => format!("r{}", next(1_000_000)),
                            n => mine[next(n as u64) as usize].clone(),
                        }
                    }
                    _ => format!("r{}", next(1_000_000)),
                };
                let dup = model.get(&(sender, id.clone())).copied();
                let want = dup.unwrap_or_else(|| {
                    // New ids of one batch may repeat; the first one stores the message.
                    seq += 1;
                    model.insert((sender, id.clone()), seq);
                    stored.push((ops.len(), sender, id.clone(), seq));
                    seq
                });
                let (a, ra) = append(1, sender, &id);
                ops.push(a);
                expect.push((ra, want, dup.is_some()));
            }
            match next(8) {
                // Dropped caches (the restaging path).
                0 => h.writer.reset_caches(),
                // More senders than the bound: the next batch drops every ceiling.
                1 if evictions < 3 => {
                    evictions += 1;
                    for dummy in 0..=CEILINGS_MAX as u64 {
                        h.writer
                            .ceilings
                            .insert(UserId(1_000 + dummy), Box::default());
                    }
                }
                // Two batches in flight at once: the second stages against the first's
                // overlay, before either is applied.
                2 | 3 if ops.len() > 1 => {
                    held_pairs += 1;
                    let half = ops.len() / 2;
                    let mut second = ops.split_off(half);
                    // The newest id the first batch stores, sent again while that batch is
                    // still in flight: its key is only in the overlay.
                    if let Some((_, sender, id, seq)) = stored.iter().rev().find(|s| s.0 < half) {
                        let (a, ra) = append(1, *sender, id);
                        second.push(a);
                        expect.push((ra, *seq, true));
                    }
                    // From an idle pipeline: a held commit thread takes one batch and the
                    // channel holds two more, so a third would block this thread for good.
                    h.writer.settle();
                    h.writer.progress.hold(true);
                    h.writer.process(&mut ops);
                    h.writer.process(&mut second);
                    h.writer.progress.hold(false);
                    continue;
                }
                _ => {}
            }
            // Not settled: the commit thread may still be applying it when the next stages.
            h.writer.process(&mut ops);
            if round % 4 == 3 {
                h.writer.settle();
                for (ra, want, dup) in expect.drain(..) {
                    assert_eq!(appended(ra), (want, dup));
                }
            }
        }
        // One more batch, so that a pending eviction has happened: a resend of the first id.
        let ((sender, id), first) = model.iter().min_by_key(|(_, seq)| **seq).unwrap();
        let (a, ra) = append(1, *sender, id);
        expect.push((ra, *first, true));
        h.writer.process(&mut vec![a]);
        h.writer.settle();
        for (ra, want, dup) in expect.drain(..) {
            assert_eq!(appended(ra), (want, dup));
        }
        assert!(
            h.writer.ceilings.len() <= 2,
            "evictions dropped the dummy ceilings"
        );
        assert!(held_pairs > 5 && evictions > 0, "{held_pairs} {evictions}");
        assert!(
            h.writer.dedup_lookups > 0 && model.len() > 100,
            "{}",
            model.len()
        );
    }

    #[test]
    fn a_batch_failed_by_the_commit_thread_is_never_acknowledged() {
        let mut h = harness();
        h.writer.progress.hold(true);
        let (u1, r1) = user("ann");
        h.writer.process(&mut vec![u1]);
        // The failure the commit thread would record after an fsync error.
        h.shared.poisoned.store(true, Ordering::Release);
        h.writer.progress.hold(false);
        h.writer.settle();
        assert!(matches!(got(r1), Err(StoreError::Poisoned)));
        let (u2, r2) = user("bob");
        h.run(vec![u2]);
        assert!(matches!(got(r2), Err(StoreError::Poisoned)));
    }

    /// A sink that panics, as a bug in the server's fan-out code would.
    struct PanickingSink;

    impl CommitSink for PanickingSink {
        fn committed(&self, _: &[UserEvent], _: &[ConversationNotice]) {
            panic!("sink bug");
        }
    }

    #[test]
    fn a_dead_commit_thread_poisons_the_store_and_releases_waiters() {
        let dir = tempfile::tempdir().unwrap();
        let (shared, ids) = Shared::open(&FjallConfig::for_tests(dir.path())).unwrap();
        let mut writer = Writer::new(
            shared.clone(),
            Arc::new(PanickingSink),
            GroupPolicy::default(),
            64,
            std::time::Duration::ZERO,
            ids,
        )
        .unwrap();
        let (u1, _) = user("ann");
        let (u2, _) = user("bob");
        let (dir_op, _) = op((UserId(1), UserId(2)), WriteOp::DirectConversation);
        writer.process(&mut vec![u1, u2, dir_op]);
        let (a1, mut ra1) = append(1, 1, "x");
        writer.process(&mut vec![a1]);
        // Returns although the commit thread died in the sink, before answering the append.
        writer.settle();
        assert!(shared.poisoned.load(Ordering::Acquire));
        assert!(
            !matches!(ra1.try_recv(), Ok(Ok(_))),
            "no success reported by a dead commit thread"
        );
        let (u3, r3) = user("cy");
        writer.process(&mut vec![u3]);
        assert!(matches!(got(r3), Err(StoreError::Poisoned)));
        drop(writer); // joins the dead thread without hanging
    }

    #[test]
    fn a_poisoned_writer_refuses_everything() {
        let mut h = harness();
        h.shared.poisoned.store(true, Ordering::Release);
        let (u1, r1) = user("ann");
        h.run(vec![u1]);
        assert!(matches!(got(r1), Err(StoreError::Poisoned)));
    }
}
