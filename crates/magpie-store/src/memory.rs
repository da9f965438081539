//! An in-memory backend: the reference model for the conformance suite and a fast store for
//! unit tests. Not durable; never used by `magpie serve`.
//!
//! The few rules that both backends must apply identically and that are pure decisions (who
//! may remove whom, who inherits a group, how system messages are named, how unread messages
//! are counted) live here as `pub(crate)` functions that the fjall writer calls too.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use magpie_core::limits::{PageText, UNREAD_COUNT_MAX};
use magpie_core::{
    now_ms, ClientMsgId, Conversation, ConversationId, ConversationKind, Cursor, Device, DeviceId,
    Event, EventPayload, FriendRequest, Member, Message, RequestId, Role, Seq, SystemEvent, User,
    UserEvent, UserId,
};
use parking_lot::Mutex;

use crate::{
    AppendError, AppendRequest, Appended, CommitSink, ConversationNotice, ConversationSummary,
    Friend, FriendError, GroupError, GroupPolicy, MessageRange, Store, StoreError,
};

/// The client id of a system message: unique per timeline position, never in the dedup index.
pub(crate) fn system_msg_id(conv: ConversationId, seq: Seq) -> ClientMsgId {
    ClientMsgId::new(format!("sys-{conv}-{seq}")).expect("a short printable ASCII id")
}

/// A fresh membership record (not muted).
pub(crate) fn new_member(
    conv: ConversationId,
    user: UserId,
    role: Role,
    joined_seq: Seq,
    read_seq: Seq,
) -> Member {
    Member {
        conversation_id: conv,
        user_id: user,
        role,
        joined_seq,
        read_seq,
        muted: false,
    }
}

/// What removing `target` by `actor` announces, or why it is refused: anyone may leave; the
/// owner may remove anyone; an admin only plain members.
pub(crate) fn removal_event(actor: &Member, target: &Member) -> Result<SystemEvent, GroupError> {
    if actor.user_id == target.user_id {
        return Ok(SystemEvent::MemberLeft {
            user: target.user_id,
        });
    }
    let allowed = match actor.role {
        Role::Owner => true,
        Role::Admin => target.role == Role::Member,
        Role::Member => false,
    };
    if allowed {
        Ok(SystemEvent::MemberRemoved {
            actor: actor.user_id,
            user: target.user_id,
        })
    } else {
        Err(GroupError::Forbidden)
    }
}

/// Who inherits a group whose owner left, among the remaining members: the admin with the
/// lowest joined_seq, else the member with the lowest joined_seq; ties go to the lowest user id.
pub(crate) fn successor(remaining: &[Member]) -> Option<&Member> {
    remaining
        .iter()
        .min_by_key(|m| (m.role != Role::Admin, m.joined_seq, m.user_id))
}

/// Messages an unread count looks at, at most: twice the largest count, so the user's own
/// messages among the unread ones (which do not count) cannot hide the others' below the
/// cap unless the user sent more than half of the newest messages it looks at.
pub(crate) const UNREAD_SCAN_MESSAGES_MAX: usize = 2 * UNREAD_COUNT_MAX as usize;

/// Bytes of messages the unread counts of one conversation list (or one row) look at, at
/// most, all rows together (plus the message that crosses the bound): learning a sender means
/// reading the whole message in the embedded store, and conversations full of 400 KB
/// messages must not cost gigabytes per list. Past it, counts are lower bounds.
pub(crate) const UNREAD_SCAN_BYTES_MAX: usize = 32 * 1024 * 1024;

/// The unread count of `user` from the messages after its read_seq, newest first, as
/// (sender, stored bytes): the others' messages, counted up to [`UNREAD_COUNT_MAX`] among at
/// most [`UNREAD_SCAN_MESSAGES_MAX`] messages and about [`UNREAD_SCAN_BYTES_MAX`]. Before,
/// the cap bounded the messages looked at, so 9,999 messages of the user's own after one
/// from someone else counted 0.
/// `budget` is the bytes still to be looked at for the whole list; it shrinks by what this
/// count reads.
pub(crate) fn count_unread(
    user: UserId,
    newest_first: impl Iterator<Item = (UserId, usize)>,
    budget: &mut usize,
) -> u64 {
    newest_first
        .take(UNREAD_SCAN_MESSAGES_MAX)
        .take_while(|&(_, bytes)| {
            let within = *budget > 0;
            *budget = budget.saturating_sub(bytes);
            within
        })
        .filter(|&(sender, _)| sender != user)
        .take(UNREAD_COUNT_MAX as usize)
        .count() as u64
}

/// The order of `conversations_of`: most recent activity (last message, else creation) first,
/// ties by conversation id, highest first.
pub(crate) fn sort_summaries(list: &mut [ConversationSummary]) {
    let activity = |s: &ConversationSummary| {
        s.last_message
            .as_ref()
            .map_or(s.conversation.created_ms, |m| m.ts_ms)
    };
    list.sort_by(|a, b| {
        activity(b)
            .cmp(&activity(a))
            .then(b.conversation.id.cmp(&a.conversation.id))
    });
}

/// Whether messages of `conv` go into every member's inbox (direct conversations and small
/// groups) rather than being announced by a notice (large groups).
pub(crate) fn writes_fanout(policy: &GroupPolicy, conv: &Conversation) -> bool {
    conv.kind == ConversationKind::Direct || policy.writes_fanout(conv.member_count)
}

/// Whether a read in `conv` writes a `Receipt` event for every other member.
pub(crate) fn pushes_receipts(policy: &GroupPolicy, conv: &Conversation) -> bool {
    conv.kind == ConversationKind::Direct || policy.pushes_receipts(conv.member_count)
}

#[derive(Default)]
struct State {
    users: Vec<User>,
    users_by_name: HashMap<String, UserId>,
    devices: Vec<Device>,
    /// Indexed by conversation id − 1.
    conversations: Vec<Conversation>,
    directs: HashMap<(UserId, UserId), ConversationId>,
    timelines: HashMap<ConversationId, Vec<Arc<Message>>>,
    inboxes: HashMap<UserId, Vec<Event>>,
    dedup: BTreeMap<(UserId, ClientMsgId), (ConversationId, Seq)>,
    /// Member rows per conversation, by user id.
    members: HashMap<ConversationId, BTreeMap<UserId, Member>>,
    /// The conversations each user is a member of.
    user_convs: HashMap<UserId, BTreeSet<ConversationId>>,
    /// Friendships, one entry per direction: user → friend → row.
    friends: HashMap<UserId, BTreeMap<UserId, Friend>>,
    /// Pending friend requests.
    requests: BTreeMap<RequestId, FriendRequest>,
    /// The id of the last request made (0 if none).
    last_request: u64,
    /// When each user was last connected (unix ms), as recorded by the presence tracker.
    last_seen: HashMap<UserId, u64>,
}

/// What one operation announces once it is done.
#[derive(Default)]
struct Out {
    events: Vec<UserEvent>,
    /// At most one per conversation: the latest.
    notices: Vec<ConversationNotice>,
}

impl Out {
    fn notice(&mut self, notice: ConversationNotice) {
        self.notices
            .retain(|n| n.conversation_id != notice.conversation_id);
        self.notices.push(notice);
    }
}

/// The in-memory store. All operations take one lock, which makes it trivially linearizable.
pub struct MemoryStore {
    /// Everything, behind one lock.
    state: Mutex<State>,
    /// Group size and fan-out policy.
    policy: GroupPolicy,
    /// Told about every appended event, under the lock, so order matches cursor order.
    sink: Arc<dyn CommitSink>,
}

impl MemoryStore {
    /// An empty store with the default [`GroupPolicy`] announcing commits to `sink`.
    pub fn new(sink: Arc<dyn CommitSink>) -> Self {
        Self::with_policy(sink, GroupPolicy::default())
    }

    /// An empty store with `policy` announcing commits to `sink`.
    pub fn with_policy(sink: Arc<dyn CommitSink>, policy: GroupPolicy) -> Self {
        Self {
            state: Mutex::new(State::default()),
            policy,
            sink,
        }
    }

    /// Runs one operation under the lock and announces what it produced.
    fn run<T>(&self, f: impl FnOnce(&mut State, &GroupPolicy, &mut Out) -> T) -> T {
        let mut s = self.state.lock();
        let mut out = Out::default();
        let r = f(&mut s, &self.policy, &mut out);
        // Still under the lock, so no reader sees the removal before the hook ran.
        if crate::removes_members(&out.events) {
            self.sink.members_removed();
        }
        if !out.events.is_empty() || !out.notices.is_empty() {
            self.sink.committed(&out.events, &out.notices);
        }
        r
    }
}

fn direct_key(a: UserId, b: UserId) -> (UserId, UserId) {
    (a.min(b), a.max(b))
}

fn index(id: u64) -> usize {
    (id as usize).wrapping_sub(1)
}

impl State {
    fn user_exists(&self, id: UserId) -> bool {
        self.users.get(index(id.0)).is_some()
    }

    fn conv(&self, id: ConversationId) -> Option<&Conversation> {
        self.conversations.get(index(id.0))
    }

    fn conv_mut(&mut self, id: ConversationId) -> &mut Conversation {
        &mut self.conversations[index(id.0)]
    }

    fn member(&self, conv: ConversationId, user: UserId) -> Option<&Member> {
        self.members.get(&conv).and_then(|m| m.get(&user))
    }

    fn member_ids(&self, conv: ConversationId) -> Arc<[UserId]> {
        self.members
            .get(&conv)
            .map_or_else(|| Arc::from(Vec::new()), |m| m.keys().copied().collect())
    }

    fn last_seq(&self, conv: ConversationId) -> Seq {
        Seq(self.timelines.get(&conv).map_or(0, |t| t.len() as u64))
    }

    fn add_member(&mut self, m: Member) {
        self.user_convs
            .entry(m.user_id)
            .or_default()
            .insert(m.conversation_id);
        self.members
            .entry(m.conversation_id)
            .or_default()
            .insert(m.user_id, m);
    }

    fn push_event(&mut self, user: UserId, payload: EventPayload, out: &mut Out) {
        let inbox = self.inboxes.entry(user).or_default();
        let event = Event {
            cursor: Cursor(inbox.len() as u64 + 1),
            payload,
        };
        inbox.push(event.clone());
        out.events.push(UserEvent {
            user_id: user,
            event,
        });
    }

    /// Appends the next message of `conv` to its timeline and fans it out to the current
    /// members per the policy: a user message's id and text, or a system event.
    fn append_message(
        &mut self,
        policy: &GroupPolicy,
        conv: ConversationId,
        sender: UserId,
        body: Result<(ClientMsgId, String), SystemEvent>,
        out: &mut Out,
    ) -> Arc<Message> {
        let timeline = self.timelines.entry(conv).or_default();
        let seq = Seq(timeline.len() as u64 + 1);
        let ts_ms = timeline.last().map_or(0, |m| m.ts_ms).max(now_ms());
        let (client_msg_id, text, system) = match body {
            Ok((id, text)) => (id, text, None),
            Err(event) => (system_msg_id(conv, seq), String::new(), Some(event)),
        };
        let message = Arc::new(Message {
            conversation_id: conv,
            seq,
            sender_id: sender,
            client_msg_id,
            text,
            system,
            ts_ms,
        });
        timeline.push(message.clone());
        let members = self.member_ids(conv);
        if writes_fanout(policy, &self.conversations[index(conv.0)]) {
            for &member in members.iter() {
                self.push_event(member, EventPayload::Message(message.clone()), out);
            }
        } else {
            out.notice(ConversationNotice {
                conversation_id: conv,
                last_seq: seq,
                members,
            });
        }
        message
    }

    fn system_message(
        &mut self,
        policy: &GroupPolicy,
        conv: ConversationId,
        actor: UserId,
        event: SystemEvent,
        out: &mut Out,
    ) -> Arc<Message> {
        self.append_message(policy, conv, actor, Err(event), out)
    }

    /// The message `sender` sent with `client_msg_id`, if any.
    fn sent_message(&self, sender: UserId, client_msg_id: &ClientMsgId) -> Option<Arc<Message>> {
        let &(cid, seq) = self.dedup.get(&(sender, client_msg_id.clone()))?;
        Some(self.timelines[&cid][(seq.0 - 1) as usize].clone())
    }

    fn append_one(
        &mut self,
        policy: &GroupPolicy,
        req: AppendRequest,
        out: &mut Out,
    ) -> Result<Appended, AppendError> {
        // A resend is answered before any access check: the message exists, and a sender
        // who lost access since must still learn that it was stored, not that it failed.
        if let Some(message) = self.sent_message(req.sender_id, &req.client_msg_id) {
            return Ok(Appended {
                message,
                duplicate: true,
            });
        }
        let conv = self
            .conv(req.conversation_id)
            .ok_or(AppendError::NoConversation)?
            .id;
        if self.member(conv, req.sender_id).is_none() {
            return Err(AppendError::NotMember);
        }
        let message = self.append_message(
            policy,
            conv,
            req.sender_id,
            Ok((req.client_msg_id.clone(), req.text)),
            out,
        );
        self.dedup
            .insert((req.sender_id, req.client_msg_id), (conv, message.seq));
        Ok(Appended {
            message,
            duplicate: false,
        })
    }

    fn direct(&mut self, a: UserId, b: UserId) -> Result<Conversation, StoreError> {
        if a == b {
            return Err(StoreError::NotFound("other user"));
        }
        for u in [a, b] {
            if !self.user_exists(u) {
                return Err(StoreError::NotFound("user"));
            }
        }
        let key = direct_key(a, b);
        if let Some(id) = self.directs.get(&key) {
            return Ok(self.conversations[index(id.0)].clone());
        }
        let conv = Conversation {
            id: ConversationId(self.conversations.len() as u64 + 1),
            kind: ConversationKind::Direct,
            name: String::new(),
            owner: None,
            member_count: 2,
            members: vec![key.0, key.1],
            created_ms: now_ms(),
        };
        self.directs.insert(key, conv.id);
        self.conversations.push(conv.clone());
        for u in [key.0, key.1] {
            self.add_member(new_member(conv.id, u, Role::Member, Seq(1), Seq(0)));
        }
        Ok(conv)
    }

    fn are_friends(&self, a: UserId, b: UserId) -> Option<&Friend> {
        self.friends.get(&a).and_then(|f| f.get(&b))
    }

    fn pending(&self, from: UserId, to: UserId) -> Option<&FriendRequest> {
        self.requests
            .values()
            .find(|r| r.from == from && r.to == to)
    }

    /// The group `id` and the actor's membership, or why a group operation is refused.
    fn group_and_actor(
        &self,
        id: ConversationId,
        actor: UserId,
    ) -> Result<(Conversation, Member), GroupError> {
        let conv = self.conv(id).ok_or(GroupError::NotFound)?;
        if conv.kind != ConversationKind::Group {
            return Err(GroupError::NotGroup);
        }
        let member = self.member(id, actor).ok_or(GroupError::NotMember)?;
        Ok((conv.clone(), member.clone()))
    }

    /// `budget`: see [`count_unread`].
    fn summary(
        &self,
        user: UserId,
        conv: ConversationId,
        budget: &mut usize,
    ) -> ConversationSummary {
        let member = self.members[&conv][&user].clone();
        let timeline = self.timelines.get(&conv).map_or(&[][..], Vec::as_slice);
        let unread = timeline
            .iter()
            .rev()
            .take_while(|m| m.seq > member.read_seq)
            .map(|m| (m.sender_id, m.text.len()));
        ConversationSummary {
            conversation: self.conversations[index(conv.0)].clone(),
            unread_count: count_unread(user, unread, budget),
            member,
            last_message: timeline.last().cloned(),
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn health(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn create_user(
        &self,
        username: String,
        password_hash: String,
    ) -> Result<User, StoreError> {
        let mut s = self.state.lock();
        if s.users_by_name.contains_key(&username) {
            return Err(StoreError::UsernameTaken);
        }
        let user = User {
            id: UserId(s.users.len() as u64 + 1),
            username: username.clone(),
            password_hash,
            created_ms: now_ms(),
        };
        s.users_by_name.insert(username, user.id);
        s.users.push(user.clone());
        Ok(user)
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError> {
        let s = self.state.lock();
        Ok(s.users.get(index(id.0)).cloned())
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<User>, StoreError> {
        let s = self.state.lock();
        Ok(s.users_by_name
            .get(username)
            .map(|id| s.users[index(id.0)].clone()))
    }

    async fn create_device(
        &self,
        user: UserId,
        name: String,
        token_hash: [u8; 32],
    ) -> Result<Device, StoreError> {
        let mut s = self.state.lock();
        if !s.user_exists(user) {
            return Err(StoreError::NotFound("user"));
        }
        let device = Device {
            id: DeviceId(s.devices.len() as u64 + 1),
            user_id: user,
            name,
            token_hash,
            cursor: Cursor(0),
            revoked: false,
        };
        s.devices.push(device.clone());
        Ok(device)
    }

    async fn device_by_token(&self, token_hash: [u8; 32]) -> Result<Option<Device>, StoreError> {
        let s = self.state.lock();
        Ok(s.devices
            .iter()
            .find(|d| d.token_hash == token_hash && !d.revoked)
            .cloned())
    }

    async fn device(&self, id: DeviceId) -> Result<Option<Device>, StoreError> {
        let s = self.state.lock();
        Ok(s.devices.get(index(id.0)).cloned())
    }

    async fn revoke_device(&self, id: DeviceId) -> Result<(), StoreError> {
        let mut s = self.state.lock();
        let d = s
            .devices
            .get_mut(index(id.0))
            .ok_or(StoreError::NotFound("device"))?;
        d.revoked = true;
        Ok(())
    }

    async fn ack_cursor(&self, id: DeviceId, cursor: Cursor) -> Result<(), StoreError> {
        let mut s = self.state.lock();
        let d = s
            .devices
            .get_mut(index(id.0))
            .ok_or(StoreError::NotFound("device"))?;
        d.cursor = d.cursor.max(cursor);
        Ok(())
    }

    async fn direct_conversation(&self, a: UserId, b: UserId) -> Result<Conversation, StoreError> {
        self.state.lock().direct(a, b)
    }

    async fn conversation(&self, id: ConversationId) -> Result<Option<Conversation>, StoreError> {
        let s = self.state.lock();
        Ok(s.conv(id).cloned())
    }

    async fn append(
        &self,
        batch: Vec<AppendRequest>,
    ) -> Result<Vec<Result<Appended, AppendError>>, StoreError> {
        Ok(self.run(|s, policy, out| {
            batch
                .into_iter()
                .map(|r| s.append_one(policy, r, out))
                .collect()
        }))
    }

    async fn messages(
        &self,
        conversation: ConversationId,
        range: MessageRange,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let s = self.state.lock();
        let Some(t) = s.timelines.get(&conversation) else {
            return Ok(Vec::new());
        };
        let mut all: Vec<&Arc<Message>> = match range {
            MessageRange::After(seq) => t.iter().filter(|m| m.seq > seq).take(limit).collect(),
            MessageRange::Before(seq) => {
                let older: Vec<_> = t.iter().filter(|m| m.seq < seq).collect();
                older[older.len().saturating_sub(limit)..].to_vec()
            }
            MessageRange::Latest => t[t.len().saturating_sub(limit)..].iter().collect(),
        };
        // The same text bound as the embedded store, counted from where the read starts.
        if matches!(range, MessageRange::After(_)) {
            all.truncate(PageText::fitting(all.iter().map(|m| m.text.len())));
        } else {
            let n = PageText::fitting(all.iter().rev().map(|m| m.text.len()));
            all.drain(..all.len() - n);
        }
        Ok(all.into_iter().map(|m| (**m).clone()).collect())
    }

    async fn events(
        &self,
        user: UserId,
        after: Cursor,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let s = self.state.lock();
        let Some(inbox) = s.inboxes.get(&user) else {
            return Ok(Vec::new());
        };
        let mut page: Vec<Event> = inbox
            .iter()
            .skip(usize::try_from(after.0).unwrap_or(usize::MAX))
            .take(limit)
            .cloned()
            .collect();
        page.truncate(PageText::fitting(page.iter().map(Event::text_bytes)));
        Ok(page)
    }

    async fn inbox_head(&self, user: UserId) -> Result<Cursor, StoreError> {
        let s = self.state.lock();
        Ok(Cursor(s.inboxes.get(&user).map_or(0, |i| i.len() as u64)))
    }

    async fn last_seq(&self, conversation: ConversationId) -> Result<Seq, StoreError> {
        Ok(self.state.lock().last_seq(conversation))
    }

    async fn sent_message(
        &self,
        sender: UserId,
        client_msg_id: &ClientMsgId,
    ) -> Result<Option<Message>, StoreError> {
        Ok(self
            .state
            .lock()
            .sent_message(sender, client_msg_id)
            .map(|m| (*m).clone()))
    }

    // --- Friends -----------------------------------------------------------------------------

    async fn request_friend(
        &self,
        from: UserId,
        to: UserId,
        message: String,
    ) -> Result<Result<FriendRequest, FriendError>, StoreError> {
        self.run(|s, _, out| {
            if from == to {
                return Ok(Err(FriendError::SelfRequest));
            }
            if !s.user_exists(to) {
                return Ok(Err(FriendError::UnknownUser));
            }
            if !s.user_exists(from) {
                return Err(StoreError::NotFound("user"));
            }
            if s.are_friends(from, to).is_some() {
                return Ok(Err(FriendError::AlreadyFriends));
            }
            if let Some(pending) = s.pending(from, to) {
                return Ok(Ok(pending.clone()));
            }
            s.last_request += 1;
            let request = FriendRequest {
                id: RequestId(s.last_request),
                from,
                to,
                message,
                ts_ms: now_ms(),
            };
            s.requests.insert(request.id, request.clone());
            s.push_event(to, EventPayload::FriendRequest(request.clone()), out);
            Ok(Ok(request))
        })
    }

    async fn friend_requests(
        &self,
        user: UserId,
    ) -> Result<(Vec<FriendRequest>, Vec<FriendRequest>), StoreError> {
        let s = self.state.lock();
        let of = |pick: fn(&FriendRequest) -> UserId| {
            s.requests
                .values()
                .filter(|r| pick(r) == user)
                .cloned()
                .collect::<Vec<_>>()
        };
        Ok((of(|r| r.to), of(|r| r.from)))
    }

    async fn answer_friend_request(
        &self,
        user: UserId,
        request: RequestId,
        accept: bool,
    ) -> Result<Result<Option<Conversation>, FriendError>, StoreError> {
        self.run(|s, _, out| {
            let Some(r) = s.requests.get(&request).cloned() else {
                return Ok(Err(FriendError::NotFound));
            };
            if r.to != user {
                return Ok(Err(FriendError::NotAddressee));
            }
            s.requests.remove(&request);
            if !accept {
                return Ok(Ok(None));
            }
            if let Some(f) = s.are_friends(r.from, r.to) {
                return Ok(Ok(s.conv(f.conversation_id).cloned()));
            }
            let conv = s.direct(r.from, r.to)?;
            if let Some(reverse) = s.pending(r.to, r.from).map(|r| r.id) {
                s.requests.remove(&reverse);
            }
            let since_ms = now_ms();
            for (a, b) in [(r.from, r.to), (r.to, r.from)] {
                s.friends.entry(a).or_default().insert(
                    b,
                    Friend {
                        user_id: b,
                        conversation_id: conv.id,
                        since_ms,
                    },
                );
            }
            for (a, b) in [(r.from, r.to), (r.to, r.from)] {
                let payload = EventPayload::FriendAdded {
                    user_id: b,
                    conversation_id: conv.id,
                };
                s.push_event(a, payload, out);
            }
            Ok(Ok(Some(conv)))
        })
    }

    async fn friends(&self, user: UserId) -> Result<Vec<Friend>, StoreError> {
        let s = self.state.lock();
        Ok(s.friends
            .get(&user)
            .map(|f| f.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn are_friends(&self, a: UserId, b: UserId) -> Result<bool, StoreError> {
        Ok(self.state.lock().are_friends(a, b).is_some())
    }

    async fn remove_friend(&self, user: UserId, other: UserId) -> Result<bool, StoreError> {
        let mut s = self.state.lock();
        if s.are_friends(user, other).is_none() {
            return Ok(false);
        }
        for (a, b) in [(user, other), (other, user)] {
            if let Some(f) = s.friends.get_mut(&a) {
                f.remove(&b);
            }
        }
        Ok(true)
    }

    // --- Groups ------------------------------------------------------------------------------

    async fn create_group(
        &self,
        owner: UserId,
        name: String,
        members: Vec<UserId>,
    ) -> Result<Result<Conversation, GroupError>, StoreError> {
        Ok(self.run(|s, policy, out| {
            let mut ids = members;
            ids.push(owner);
            ids.sort_unstable();
            ids.dedup();
            if ids.len() > policy.members_max as usize {
                return Err(GroupError::GroupFull {
                    max: policy.members_max,
                });
            }
            if let Some(&unknown) = ids.iter().find(|&&u| !s.user_exists(u)) {
                return Err(GroupError::UnknownUser(unknown));
            }
            let conv = Conversation {
                id: ConversationId(s.conversations.len() as u64 + 1),
                kind: ConversationKind::Group,
                name: name.clone(),
                owner: Some(owner),
                member_count: ids.len() as u32,
                members: Vec::new(),
                created_ms: now_ms(),
            };
            s.conversations.push(conv.clone());
            for &u in &ids {
                let role = if u == owner {
                    Role::Owner
                } else {
                    Role::Member
                };
                s.add_member(new_member(conv.id, u, role, Seq(1), Seq(1)));
            }
            let event = SystemEvent::GroupCreated {
                actor: owner,
                name,
                members: ids.clone(),
            };
            s.system_message(policy, conv.id, owner, event, out);
            for &u in &ids {
                let payload = EventPayload::GroupJoined {
                    conversation_id: conv.id,
                };
                s.push_event(u, payload, out);
            }
            Ok(conv)
        }))
    }

    async fn add_members(
        &self,
        actor: UserId,
        conversation: ConversationId,
        users: Vec<UserId>,
    ) -> Result<Result<Option<Arc<Message>>, GroupError>, StoreError> {
        Ok(self.run(|s, policy, out| {
            let (conv, me) = s.group_and_actor(conversation, actor)?;
            if me.role == Role::Member {
                return Err(GroupError::Forbidden);
            }
            let mut new = users;
            new.sort_unstable();
            new.dedup();
            new.retain(|&u| s.member(conv.id, u).is_none());
            if let Some(&unknown) = new.iter().find(|&&u| !s.user_exists(u)) {
                return Err(GroupError::UnknownUser(unknown));
            }
            if new.is_empty() {
                return Ok(None);
            }
            let count = conv.member_count as usize + new.len();
            if count > policy.members_max as usize {
                return Err(GroupError::GroupFull {
                    max: policy.members_max,
                });
            }
            let joined = s.last_seq(conv.id).next();
            for &u in &new {
                s.add_member(new_member(conv.id, u, Role::Member, joined, joined));
            }
            s.conv_mut(conv.id).member_count = count as u32;
            let event = SystemEvent::MembersAdded {
                actor,
                users: new.clone(),
            };
            let message = s.system_message(policy, conv.id, actor, event, out);
            for &u in &new {
                let payload = EventPayload::GroupJoined {
                    conversation_id: conv.id,
                };
                s.push_event(u, payload, out);
            }
            Ok(Some(message))
        }))
    }

    async fn remove_member(
        &self,
        actor: UserId,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<Result<Vec<Arc<Message>>, GroupError>, StoreError> {
        Ok(self.run(|s, policy, out| {
            let (conv, me) = s.group_and_actor(conversation, actor)?;
            let target = s
                .member(conv.id, user)
                .cloned()
                .ok_or(GroupError::NotMember)?;
            let event = removal_event(&me, &target)?;
            if let Some(m) = s.members.get_mut(&conv.id) {
                m.remove(&user);
            }
            if let Some(c) = s.user_convs.get_mut(&user) {
                c.remove(&conv.id);
            }
            let owner_left = target.role == Role::Owner;
            {
                let c = s.conv_mut(conv.id);
                c.member_count -= 1;
                if owner_left {
                    c.owner = None;
                }
            }
            let mut appended = vec![s.system_message(policy, conv.id, actor, event, out)];
            let payload = EventPayload::GroupLeft {
                conversation_id: conv.id,
            };
            s.push_event(user, payload, out);
            if owner_left {
                let remaining: Vec<Member> = s
                    .members
                    .get(&conv.id)
                    .map(|m| m.values().cloned().collect())
                    .unwrap_or_default();
                if let Some(heir) = successor(&remaining).map(|m| m.user_id) {
                    if let Some(m) = s.members.get_mut(&conv.id).and_then(|m| m.get_mut(&heir)) {
                        m.role = Role::Owner;
                    }
                    s.conv_mut(conv.id).owner = Some(heir);
                    let event = SystemEvent::OwnerChanged { user: heir };
                    appended.push(s.system_message(policy, conv.id, actor, event, out));
                }
            }
            Ok(appended)
        }))
    }

    async fn set_role(
        &self,
        actor: UserId,
        conversation: ConversationId,
        user: UserId,
        role: Role,
    ) -> Result<Result<Arc<Message>, GroupError>, StoreError> {
        Ok(self.run(|s, policy, out| {
            let (conv, me) = s.group_and_actor(conversation, actor)?;
            if me.role != Role::Owner {
                return Err(GroupError::Forbidden);
            }
            let target = s.member(conv.id, user).ok_or(GroupError::NotMember)?;
            if target.role == Role::Owner || role == Role::Owner {
                return Err(GroupError::Forbidden);
            }
            if let Some(m) = s.members.get_mut(&conv.id).and_then(|m| m.get_mut(&user)) {
                m.role = role;
            }
            let event = SystemEvent::RoleChanged { actor, user, role };
            Ok(s.system_message(policy, conv.id, actor, event, out))
        }))
    }

    async fn rename_group(
        &self,
        actor: UserId,
        conversation: ConversationId,
        name: String,
    ) -> Result<Result<Arc<Message>, GroupError>, StoreError> {
        Ok(self.run(|s, policy, out| {
            let (conv, me) = s.group_and_actor(conversation, actor)?;
            if me.role == Role::Member {
                return Err(GroupError::Forbidden);
            }
            s.conv_mut(conv.id).name = name.clone();
            let event = SystemEvent::Renamed { actor, name };
            Ok(s.system_message(policy, conv.id, actor, event, out))
        }))
    }

    async fn member(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<Option<Member>, StoreError> {
        Ok(self.state.lock().member(conversation, user).cloned())
    }

    async fn members(
        &self,
        conversation: ConversationId,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<Vec<Member>, StoreError> {
        let s = self.state.lock();
        let Some(m) = s.members.get(&conversation) else {
            return Ok(Vec::new());
        };
        let from = match after {
            Some(after) => std::ops::Bound::Excluded(after),
            None => std::ops::Bound::Unbounded,
        };
        Ok(m.range((from, std::ops::Bound::Unbounded))
            .take(limit)
            .map(|(_, m)| m.clone())
            .collect())
    }

    // --- Per-user conversation state ----------------------------------------------------------

    async fn conversations_of(&self, user: UserId) -> Result<Vec<ConversationSummary>, StoreError> {
        let s = self.state.lock();
        let mut list: Vec<ConversationSummary> = s
            .user_convs
            .get(&user)
            .map(|convs| {
                let mut budget = UNREAD_SCAN_BYTES_MAX;
                convs
                    .iter()
                    .map(|&c| s.summary(user, c, &mut budget))
                    .collect()
            })
            .unwrap_or_default();
        sort_summaries(&mut list);
        Ok(list)
    }

    async fn conversation_summary(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<Option<ConversationSummary>, StoreError> {
        let s = self.state.lock();
        Ok(s.member(conversation, user).is_some().then(|| {
            let mut budget = UNREAD_SCAN_BYTES_MAX;
            s.summary(user, conversation, &mut budget)
        }))
    }

    async fn mark_read(
        &self,
        user: UserId,
        conversation: ConversationId,
        seq: Seq,
    ) -> Result<Result<Seq, GroupError>, StoreError> {
        Ok(self.run(|s, policy, out| {
            let old = s
                .member(conversation, user)
                .ok_or(GroupError::NotMember)?
                .read_seq;
            let read = old.max(seq.min(s.last_seq(conversation)));
            if read == old {
                return Ok(old);
            }
            if let Some(m) = s
                .members
                .get_mut(&conversation)
                .and_then(|m| m.get_mut(&user))
            {
                m.read_seq = read;
            }
            let payload = EventPayload::Read {
                conversation_id: conversation,
                read_seq: read,
            };
            s.push_event(user, payload, out);
            if pushes_receipts(policy, &s.conversations[index(conversation.0)]) {
                for other in s.member_ids(conversation).iter() {
                    if *other != user {
                        let payload = EventPayload::Receipt {
                            conversation_id: conversation,
                            user_id: user,
                            read_seq: read,
                        };
                        s.push_event(*other, payload, out);
                    }
                }
            }
            Ok(read)
        }))
    }

    async fn set_muted(
        &self,
        user: UserId,
        conversation: ConversationId,
        muted: bool,
    ) -> Result<Result<(), GroupError>, StoreError> {
        let mut s = self.state.lock();
        match s
            .members
            .get_mut(&conversation)
            .and_then(|m| m.get_mut(&user))
        {
            Some(m) => {
                m.muted = muted;
                Ok(Ok(()))
            }
            None => Ok(Err(GroupError::NotMember)),
        }
    }

    async fn record_last_seen(&self, seen: Vec<(UserId, u64)>) -> Result<(), StoreError> {
        crate::types::check_last_seen_len(&seen)?;
        let mut s = self.state.lock();
        for (user, ts_ms) in seen {
            let at = s.last_seen.entry(user).or_default();
            *at = (*at).max(ts_ms);
        }
        Ok(())
    }

    async fn last_seen(&self, users: &[UserId]) -> Result<Vec<u64>, StoreError> {
        let s = self.state.lock();
        Ok(users
            .iter()
            .map(|u| s.last_seen.get(u).copied().unwrap_or(0))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_messages_do_not_hide_the_others_from_the_unread_count() {
        let (me, other) = (UserId(1), UserId(2));
        let cap = UNREAD_COUNT_MAX as usize;
        // Newest first: the user's own 9,999, then one from someone else.
        let (mine, theirs) = ((me, 10), (other, 10));
        let fresh = || UNREAD_SCAN_BYTES_MAX;
        let senders = std::iter::repeat_n(mine, cap).chain([theirs]);
        assert_eq!(count_unread(me, senders, &mut fresh()), 1);
        // The others' messages count up to the cap and no further.
        assert_eq!(
            count_unread(me, std::iter::repeat_n(theirs, cap + 5), &mut fresh()),
            UNREAD_COUNT_MAX
        );
        // Past the scan bound nothing more is looked at.
        let senders = std::iter::repeat_n(mine, UNREAD_SCAN_MESSAGES_MAX).chain([theirs]);
        assert_eq!(count_unread(me, senders, &mut fresh()), 0);
        // Nor past the byte bound: 400 KB messages are counted up to the one crossing 32 MiB,
        // and the bound holds for a whole list: the next row gets nothing more.
        let big = (other, 400_000);
        let mut list_budget = fresh();
        let counted = count_unread(me, std::iter::repeat_n(big, 200), &mut list_budget);
        assert_eq!(counted, UNREAD_SCAN_BYTES_MAX.div_ceil(400_000) as u64);
        assert_eq!(
            count_unread(me, std::iter::repeat_n(big, 200), &mut list_budget),
            0
        );
    }
}
