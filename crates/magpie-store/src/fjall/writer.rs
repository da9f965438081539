//! The writer thread: the only code that mutates the database.
//!
//! It blocks for one [`WriteOp`], drains whatever else is queued (up to `batch_ops_max` ops),
//! stages every op into an in-memory write set, commits that set as ONE fjall batch, fsyncs
//! once, publishes the new durable snapshot, announces the batch's inbox events to the sink and
//! only then replies. One fsync is shared by every op of the batch ("group commit").
//!
//! Because it is the only writer, it can keep id counters, the last seq of each conversation
//! and the head cursor of each inbox in memory and never scan while appending.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use fjall::{PersistMode, Slice};
use magpie_core::{
    now_ms, Conversation, ConversationId, ConversationKind, Cursor, Device, DeviceId, Event,
    EventPayload, Message, Seq, User, UserEvent, UserId,
};
use tokio::sync::{mpsc, oneshot};

use crate::fjall::codec::{
    decode_conversation, decode_device, decode_device_ids, decode_message, encode_conversation,
    encode_device, encode_device_ids, encode_event, encode_message, encode_user, StoredEvent,
};
use crate::fjall::keys::{
    be_u64, conv_key, dedup_key, device_key, direct_key, inbox_key, message_key, pair, parse_pair,
    user_key, Ks, META_NEXT_CONVERSATION_ID, META_NEXT_DEVICE_ID, META_NEXT_USER_ID,
};
use crate::fjall::read::inbox_head_of;
use crate::fjall::Shared;
use crate::{AppendError, AppendRequest, Appended, CommitSink, StoreError};

/// Past this many entries a cache is dropped at the next batch boundary and refilled lazily
/// from disk, so memory stays bounded however many conversations and users have been active
/// since the store opened (at the bound: tens of MiB for tips and heads, roughly 100 MiB of
/// cached conversations).
const CACHE_ENTRIES_MAX: usize = 1 << 20;

/// A batch stops taking more ops once their payload reaches this many bytes, so a burst of
/// large messages cannot make one batch (held twice in memory while staged) arbitrarily big.
const BATCH_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Histogram: commit + fsync time of one batch, in seconds.
const METRIC_COMMIT_SECONDS: &str = "magpie_store_commit_seconds";
/// Histogram: write ops per committed batch.
const METRIC_BATCH_OPS: &str = "magpie_store_batch_ops";
/// Counter: committed batches.
const METRIC_BATCHES_TOTAL: &str = "magpie_store_batches_total";
/// Counter: new (non-duplicate) messages made durable.
const METRIC_MESSAGES_APPENDED_TOTAL: &str = "magpie_store_messages_appended_total";

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
}

impl WriteOp {
    /// Roughly how many bytes this op adds to a batch (texts dominate).
    fn payload_bytes(&self) -> usize {
        match self {
            WriteOp::Append(p) => p
                .cmd
                .iter()
                .map(|r| r.text.len() + r.client_msg_id.as_str().len())
                .sum(),
            WriteOp::CreateUser(p) => p.cmd.username.len() + p.cmd.password_hash.len(),
            WriteOp::CreateDevice(p) => p.cmd.name.len(),
            WriteOp::RevokeDevice(_) | WriteOp::AckCursor(_) | WriteOp::DirectConversation(_) => 0,
        }
    }

    fn finish(self) {
        match self {
            WriteOp::CreateUser(p) => p.finish(),
            WriteOp::CreateDevice(p) => p.finish(),
            WriteOp::RevokeDevice(p) => p.finish(),
            WriteOp::AckCursor(p) => p.finish(),
            WriteOp::DirectConversation(p) => p.finish(),
            WriteOp::Append(p) => p.finish(),
        }
    }

    fn fail(self, e: StoreError) {
        match self {
            WriteOp::CreateUser(p) => p.fail(e),
            WriteOp::CreateDevice(p) => p.fail(e),
            WriteOp::RevokeDevice(p) => p.fail(e),
            WriteOp::AckCursor(p) => p.fail(e),
            WriteOp::DirectConversation(p) => p.fail(e),
            WriteOp::Append(p) => p.fail(e),
        }
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

/// One staging attempt: the write set of the batch plus what to announce after commit.
struct Staged {
    /// Per keyspace (`Ks as usize`): key → new value, or `None` for a delete. A map rather than
    /// a list so a key written twice in one batch appears once, and so later ops of the batch
    /// read the earlier ops' writes (the overlay).
    writes: Vec<HashMap<Vec<u8>, Option<Slice>>>,
    /// New inbox events in staging order, which is cursor order per user.
    events: Vec<UserEvent>,
    /// New (non-duplicate) messages, for the metric.
    messages_appended: u64,
}

impl Staged {
    fn new() -> Self {
        Self {
            writes: vec![HashMap::new(); Ks::ALL.len()],
            events: Vec::new(),
            messages_appended: 0,
        }
    }

    fn put(&mut self, ks: Ks, key: impl AsRef<[u8]>, value: impl Into<Slice>) {
        self.writes[ks as usize].insert(key.as_ref().to_vec(), Some(value.into()));
    }

    fn delete(&mut self, ks: Ks, key: impl AsRef<[u8]>) {
        self.writes[ks as usize].insert(key.as_ref().to_vec(), None);
    }

    fn staged(&self, ks: Ks, key: &[u8]) -> Option<&Option<Slice>> {
        self.writes[ks as usize].get(key)
    }

    fn is_empty(&self) -> bool {
        self.writes.iter().all(HashMap::is_empty)
    }

    fn len(&self) -> usize {
        self.writes.iter().map(HashMap::len).sum()
    }
}

/// The writer's state; lives on the "magpie-writer" thread.
pub(crate) struct Writer {
    /// Database, keyspaces, durable snapshot and poison flag, shared with the readers.
    shared: Arc<Shared>,
    /// Told about every committed inbox event.
    sink: Arc<dyn CommitSink>,
    /// Most ops folded into one batch; bounds batch latency and memory.
    batch_ops_max: usize,
    /// Counters as of the last commit, restored when a staging attempt is thrown away.
    committed_ids: Counters,
    /// Counters including the current staging attempt.
    ids: Counters,
    /// Newest message per conversation touched since open (bounded by `CACHE_ENTRIES_MAX`).
    tips: HashMap<ConversationId, Tip>,
    /// Head cursor per inbox touched since open (bounded by `CACHE_ENTRIES_MAX`).
    heads: HashMap<UserId, Cursor>,
    /// Conversations (members) appended to since open; immutable records, so never stale.
    convs: HashMap<ConversationId, Arc<Conversation>>,
}

impl Writer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        sink: Arc<dyn CommitSink>,
        batch_ops_max: usize,
        ids: Counters,
    ) -> Self {
        Self {
            shared,
            sink,
            batch_ops_max: batch_ops_max.max(1),
            committed_ids: ids,
            ids,
            tips: HashMap::new(),
            heads: HashMap::new(),
            convs: HashMap::new(),
        }
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
        // Every batch was already fsynced; this last persist is belt and braces for shutdown.
        if !self.shared.poisoned.load(Ordering::Acquire) {
            if let Err(e) = self.shared.db.persist(PersistMode::SyncAll) {
                tracing::error!(error = %e, "final persist of the store failed");
            }
        }
    }

    /// Stages, commits, fsyncs and answers one batch. Drains `ops`.
    pub(crate) fn process(&mut self, ops: &mut Vec<WriteOp>) {
        if self.shared.poisoned.load(Ordering::Acquire) {
            ops.drain(..).for_each(|op| op.fail(StoreError::Poisoned));
            return;
        }
        self.bound_caches();

        // A read error while staging marks that op failed; the caches may hold its half-done
        // effects, so drop them and restage the remaining ops against the unchanged disk.
        let mut staged = loop {
            match self.stage_all(ops) {
                Ok(staged) => break staged,
                Err(e) => {
                    tracing::warn!(error = %e, "write op failed while staging; restaging the batch without it");
                    self.reset_caches();
                }
            }
        };

        if staged.is_empty() {
            // Nothing changed (reads through the writer, no-op acks, failures): no fsync.
            ops.drain(..).for_each(WriteOp::finish);
            return;
        }

        let started = Instant::now();
        if let Err(e) = self.commit(&mut staged) {
            // The batch may or may not be on disk; nothing we say from now on could be trusted.
            tracing::error!(error = %e, "store commit failed; refusing all further writes");
            self.shared.poisoned.store(true, Ordering::Release);
            self.reset_caches();
            let err = StoreError::Engine(e.to_string());
            ops.drain(..).for_each(|op| op.fail(err.clone()));
            return;
        }
        metrics::histogram!(METRIC_COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
        metrics::histogram!(METRIC_BATCH_OPS).record(ops.len() as f64);
        metrics::counter!(METRIC_BATCHES_TOTAL).increment(1);
        metrics::counter!(METRIC_MESSAGES_APPENDED_TOTAL).increment(staged.messages_appended);

        self.committed_ids = self.ids;
        // Readers switch to the new state before anyone hears about it, so a reply or an event
        // is always followed by reads that include it.
        *self.shared.durable.write() = self.shared.db.snapshot();
        if !staged.events.is_empty() {
            self.sink.committed(&staged.events);
        }
        ops.drain(..).for_each(WriteOp::finish);
    }

    fn commit(&self, staged: &mut Staged) -> Result<(), fjall::Error> {
        let mut batch = self.shared.db.batch().durability(None);
        for ks in Ks::ALL {
            let handle = self.shared.ks.get(ks);
            for (key, value) in staged.writes[ks as usize].drain() {
                match value {
                    Some(value) => batch.insert(handle, key, value),
                    None => batch.remove(handle, key),
                }
            }
        }
        batch.commit()?;
        self.shared.db.persist(PersistMode::SyncAll)
    }

    fn stage_all(&mut self, ops: &mut [WriteOp]) -> Result<Staged, StoreError> {
        self.ids = self.committed_ids;
        let mut st = Staged::new();
        for op in ops.iter_mut() {
            match op {
                WriteOp::CreateUser(p) => p.stage(|c| self.create_user(&mut st, c))?,
                WriteOp::CreateDevice(p) => p.stage(|c| self.create_device(&mut st, c))?,
                WriteOp::RevokeDevice(p) => p.stage(|c| self.revoke_device(&mut st, *c))?,
                WriteOp::AckCursor(p) => p.stage(|c| self.ack_cursor(&mut st, c.0, c.1))?,
                WriteOp::DirectConversation(p) => p.stage(|c| self.direct(&mut st, c.0, c.1))?,
                WriteOp::Append(p) => p.stage(|c| self.append(&mut st, c))?,
            }
        }
        debug_assert!(
            st.len() >= st.events.len(),
            "every event has its inbox write"
        );
        Ok(st)
    }

    fn bound_caches(&mut self) {
        if self.tips.len() > CACHE_ENTRIES_MAX {
            self.tips.clear();
        }
        if self.heads.len() > CACHE_ENTRIES_MAX {
            self.heads.clear();
        }
        if self.convs.len() > CACHE_ENTRIES_MAX {
            self.convs.clear();
        }
    }

    fn reset_caches(&mut self) {
        self.tips.clear();
        self.heads.clear();
        self.convs.clear();
        self.ids = self.committed_ids;
    }

    /// Reads through the batch's own pending writes, then the disk.
    fn get(&self, st: &Staged, ks: Ks, key: &[u8]) -> Result<Option<Slice>, StoreError> {
        match st.staged(ks, key) {
            Some(v) => Ok(v.clone()),
            None => Ok(self.shared.ks.get(ks).get(key)?),
        }
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

    /// The newest message of `conv`. A miss loads from disk: nothing of this batch can be
    /// pending for a conversation without a cache entry, because staging a message sets one.
    fn tip(&mut self, conv: ConversationId) -> Result<Tip, StoreError> {
        if let Some(tip) = self.tips.get(&conv) {
            return Ok(*tip);
        }
        let tip = match self
            .shared
            .ks
            .get(Ks::Messages)
            .prefix(conv_key(conv))
            .next_back()
        {
            Some(guard) => {
                let (k, v) = guard.into_inner()?;
                let m = decode_message(&k, &v)?;
                Tip {
                    seq: m.seq,
                    ts_ms: m.ts_ms,
                }
            }
            None => Tip {
                seq: Seq(0),
                ts_ms: 0,
            },
        };
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

    fn direct(
        &mut self,
        st: &mut Staged,
        a: UserId,
        b: UserId,
    ) -> Result<Conversation, StoreError> {
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
        let conv = Conversation {
            id: ConversationId(self.ids.next_conversation),
            kind: ConversationKind::Direct,
            members: vec![a.min(b), a.max(b)],
            created_ms: now_ms(),
        };
        self.ids.next_conversation += 1;
        st.put(
            Ks::Meta,
            META_NEXT_CONVERSATION_ID,
            self.ids.next_conversation.to_be_bytes(),
        );
        st.put(Ks::Convs, conv_key(conv.id), encode_conversation(&conv));
        st.put(Ks::Directs, key, conv.id.to_be_bytes());
        self.convs.insert(conv.id, Arc::new(conv.clone()));
        Ok(conv)
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
        let Some(conv) = self.load_conversation(st, req.conversation_id)? else {
            return Ok(Err(AppendError::NoConversation));
        };
        if !conv.has_member(req.sender_id) {
            return Ok(Err(AppendError::NotMember));
        }
        let dedup = dedup_key(req.sender_id, &req.client_msg_id);
        if let Some(target) = self.get(st, Ks::Dedup, &dedup)? {
            let (cid, seq) = parse_pair(&target, "dedup value")?;
            let key = message_key(ConversationId(cid), Seq(seq));
            let Some(v) = self.get(st, Ks::Messages, &key)? else {
                return Err(StoreError::Corrupt(format!(
                    "dedup entry points to missing message {cid}/{seq}"
                )));
            };
            let message = Arc::new(decode_message(&key, &v)?);
            return Ok(Ok(Appended {
                message,
                duplicate: true,
            }));
        }

        let tip = self.tip(conv.id)?;
        let seq = tip.seq.next();
        let key = message_key(conv.id, seq);
        assert!(
            st.staged(Ks::Messages, &key).is_none(),
            "seq {seq} of conversation {} staged twice",
            conv.id
        );
        debug_assert!(
            !matches!(self.shared.ks.get(Ks::Messages).contains_key(key), Ok(true)),
            "seq {seq} of conversation {} already on disk",
            conv.id
        );
        let message = Arc::new(Message {
            conversation_id: conv.id,
            seq,
            sender_id: req.sender_id,
            client_msg_id: req.client_msg_id.clone(),
            text: req.text.clone(),
            ts_ms: now_ms().max(tip.ts_ms),
        });
        st.put(Ks::Messages, key, encode_message(&message));
        st.put(Ks::Dedup, &dedup, pair(conv.id.0, seq.0));
        let stored = encode_event(StoredEvent::Message(conv.id, seq));
        for &member in &conv.members {
            let cursor = self.head(member)?.next();
            let ikey = inbox_key(member, cursor);
            assert!(
                st.staged(Ks::Inbox, &ikey).is_none(),
                "cursor {cursor} of inbox {member} staged twice"
            );
            debug_assert!(
                !matches!(self.shared.ks.get(Ks::Inbox).contains_key(ikey), Ok(true)),
                "cursor {cursor} of inbox {member} already on disk"
            );
            st.put(Ks::Inbox, ikey, stored.as_slice());
            self.heads.insert(member, cursor);
            st.events.push(UserEvent {
                user_id: member,
                event: Event {
                    cursor,
                    payload: EventPayload::Message(message.clone()),
                },
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
        Ok(Ok(Appended {
            message,
            duplicate: false,
        }))
    }
}

#[cfg(test)]
mod tests {
    //! Drives `Writer::process` directly, so that several ops are guaranteed to share a batch.

    use magpie_core::ClientMsgId;

    use super::*;
    use crate::conformance::RecordingSink;
    use crate::fjall::FjallConfig;

    struct Harness {
        _dir: tempfile::TempDir,
        shared: Arc<Shared>,
        sink: Arc<RecordingSink>,
        writer: Writer,
    }

    fn harness() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let (shared, ids) = Shared::open(&FjallConfig::new(dir.path())).unwrap();
        let sink = RecordingSink::new();
        let writer = Writer::new(shared.clone(), sink.clone(), 1024, ids);
        Harness {
            _dir: dir,
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
                next_conversation: 2
            }
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
    fn a_poisoned_writer_refuses_everything() {
        let mut h = harness();
        h.shared.poisoned.store(true, Ordering::Release);
        let (u1, r1) = user("ann");
        h.run(vec![u1]);
        assert!(matches!(got(r1), Err(StoreError::Poisoned)));
    }
}
