//! An in-memory backend: the reference model for the conformance suite and a fast store for
//! unit tests. Not durable; never used by `magpie serve`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use magpie_core::{
    now_ms, ClientMsgId, Conversation, ConversationId, ConversationKind, Cursor, Device, DeviceId,
    Event, EventPayload, Message, Seq, User, UserEvent, UserId,
};
use parking_lot::Mutex;

use crate::{AppendError, AppendRequest, Appended, CommitSink, MessageRange, Store, StoreError};

#[derive(Default)]
struct State {
    users: Vec<User>,
    users_by_name: HashMap<String, UserId>,
    devices: Vec<Device>,
    conversations: Vec<Conversation>,
    directs: HashMap<(UserId, UserId), ConversationId>,
    timelines: HashMap<ConversationId, Vec<Arc<Message>>>,
    inboxes: HashMap<UserId, Vec<Event>>,
    dedup: BTreeMap<(UserId, ClientMsgId), (ConversationId, Seq)>,
}

/// The in-memory store. All operations take one lock, which makes it trivially linearizable.
pub struct MemoryStore {
    /// Everything, behind one lock.
    state: Mutex<State>,
    /// Told about every appended event, under the lock, so order matches cursor order.
    sink: Arc<dyn CommitSink>,
}

impl MemoryStore {
    /// An empty store announcing commits to `sink`.
    pub fn new(sink: Arc<dyn CommitSink>) -> Self {
        Self {
            state: Mutex::new(State::default()),
            sink,
        }
    }
}

fn direct_key(a: UserId, b: UserId) -> (UserId, UserId) {
    (a.min(b), a.max(b))
}

impl State {
    fn append_one(
        &mut self,
        req: AppendRequest,
        out: &mut Vec<UserEvent>,
    ) -> Result<Appended, AppendError> {
        let conv = self
            .conversations
            .get((req.conversation_id.0 as usize).wrapping_sub(1))
            .cloned()
            .ok_or(AppendError::NoConversation)?;
        if !conv.has_member(req.sender_id) {
            return Err(AppendError::NotMember);
        }
        if let Some(&(cid, seq)) = self.dedup.get(&(req.sender_id, req.client_msg_id.clone())) {
            let message = self.timelines[&cid][(seq.0 - 1) as usize].clone();
            return Ok(Appended {
                message,
                duplicate: true,
            });
        }
        let timeline = self.timelines.entry(conv.id).or_default();
        let seq = Seq(timeline.len() as u64 + 1);
        let message = Arc::new(Message {
            conversation_id: conv.id,
            seq,
            sender_id: req.sender_id,
            client_msg_id: req.client_msg_id.clone(),
            text: req.text,
            ts_ms: now_ms(),
        });
        timeline.push(message.clone());
        self.dedup
            .insert((req.sender_id, req.client_msg_id), (conv.id, seq));
        for member in &conv.members {
            let inbox = self.inboxes.entry(*member).or_default();
            let event = Event {
                cursor: Cursor(inbox.len() as u64 + 1),
                payload: EventPayload::Message(message.clone()),
            };
            inbox.push(event.clone());
            out.push(UserEvent {
                user_id: *member,
                event,
            });
        }
        Ok(Appended {
            message,
            duplicate: false,
        })
    }
}

#[async_trait]
impl Store for MemoryStore {
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
        Ok(s.users.get((id.0 as usize).wrapping_sub(1)).cloned())
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<User>, StoreError> {
        let s = self.state.lock();
        Ok(s.users_by_name
            .get(username)
            .map(|id| s.users[(id.0 - 1) as usize].clone()))
    }

    async fn create_device(
        &self,
        user: UserId,
        name: String,
        token_hash: [u8; 32],
    ) -> Result<Device, StoreError> {
        let mut s = self.state.lock();
        if s.users.get((user.0 as usize).wrapping_sub(1)).is_none() {
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
        Ok(s.devices.get((id.0 as usize).wrapping_sub(1)).cloned())
    }

    async fn revoke_device(&self, id: DeviceId) -> Result<(), StoreError> {
        let mut s = self.state.lock();
        let d = s
            .devices
            .get_mut((id.0 as usize).wrapping_sub(1))
            .ok_or(StoreError::NotFound("device"))?;
        d.revoked = true;
        Ok(())
    }

    async fn ack_cursor(&self, id: DeviceId, cursor: Cursor) -> Result<(), StoreError> {
        let mut s = self.state.lock();
        let d = s
            .devices
            .get_mut((id.0 as usize).wrapping_sub(1))
            .ok_or(StoreError::NotFound("device"))?;
        d.cursor = d.cursor.max(cursor);
        Ok(())
    }

    async fn direct_conversation(&self, a: UserId, b: UserId) -> Result<Conversation, StoreError> {
        let mut s = self.state.lock();
        for u in [a, b] {
            if s.users.get((u.0 as usize).wrapping_sub(1)).is_none() {
                return Err(StoreError::NotFound("user"));
            }
        }
        let key = direct_key(a, b);
        if let Some(id) = s.directs.get(&key) {
            return Ok(s.conversations[(id.0 - 1) as usize].clone());
        }
        let conv = Conversation {
            id: ConversationId(s.conversations.len() as u64 + 1),
            kind: ConversationKind::Direct,
            members: vec![key.0, key.1],
            created_ms: now_ms(),
        };
        s.directs.insert(key, conv.id);
        s.conversations.push(conv.clone());
        Ok(conv)
    }

    async fn conversation(&self, id: ConversationId) -> Result<Option<Conversation>, StoreError> {
        let s = self.state.lock();
        Ok(s.conversations
            .get((id.0 as usize).wrapping_sub(1))
            .cloned())
    }

    async fn append(
        &self,
        batch: Vec<AppendRequest>,
    ) -> Result<Vec<Result<Appended, AppendError>>, StoreError> {
        let mut s = self.state.lock();
        let mut events = Vec::new();
        let results = batch
            .into_iter()
            .map(|r| s.append_one(r, &mut events))
            .collect();
        self.sink.committed(&events);
        Ok(results)
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
        let all: Vec<&Arc<Message>> = match range {
            MessageRange::After(seq) => t.iter().filter(|m| m.seq > seq).take(limit).collect(),
            MessageRange::Before(seq) => {
                let older: Vec<_> = t.iter().filter(|m| m.seq < seq).collect();
                older[older.len().saturating_sub(limit)..].to_vec()
            }
            MessageRange::Latest => t[t.len().saturating_sub(limit)..].iter().collect(),
        };
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
        Ok(inbox
            .iter()
            .skip(after.0 as usize)
            .take(limit)
            .cloned()
            .collect())
    }

    async fn inbox_head(&self, user: UserId) -> Result<Cursor, StoreError> {
        let s = self.state.lock();
        Ok(Cursor(s.inboxes.get(&user).map_or(0, |i| i.len() as u64)))
    }
}
