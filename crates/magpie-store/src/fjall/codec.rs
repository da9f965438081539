//! Value encoding: a small hand-written, length-prefixed binary format.
//!
//! Every record starts with a format byte so a later layout can be told apart from this one.
//! Integers are big-endian u64, strings are a big-endian u32 byte length followed by UTF-8.
//! Decoding never panics: anything unexpected is [`StoreError::Corrupt`].

use magpie_core::{
    ClientMsgId, Conversation, ConversationId, ConversationKind, Cursor, Device, DeviceId,
    EventPayload, FriendRequest, Member, Message, RequestId, Role, Seq, SystemEvent, User, UserId,
};

use crate::fjall::keys::{be_u64, pair, parse_pair};
use crate::StoreError;

/// Format byte of every record written by this version (1 had no groups, friends or system
/// messages; nothing of it was ever deployed, so there is no migration).
const RECORD_FORMAT_V2: u8 = 2;
/// Tag of an inbox event that references a message.
const EVENT_TAG_MESSAGE: u8 = 1;
/// Tag of an inline `FriendRequest` event.
const EVENT_TAG_FRIEND_REQUEST: u8 = 2;
/// Tag of an inline `FriendAdded` event.
const EVENT_TAG_FRIEND_ADDED: u8 = 3;
/// Tag of an inline `GroupJoined` event.
const EVENT_TAG_GROUP_JOINED: u8 = 4;
/// Tag of an inline `GroupLeft` event.
const EVENT_TAG_GROUP_LEFT: u8 = 5;
/// Tag of an inline `Read` event.
const EVENT_TAG_READ: u8 = 6;
/// Tag of an inline `Receipt` event.
const EVENT_TAG_RECEIPT: u8 = 7;
/// Encoding of [`ConversationKind::Direct`].
const KIND_DIRECT: u8 = 1;
/// Encoding of [`ConversationKind::Group`].
const KIND_GROUP: u8 = 2;
/// Encoding of [`Role::Owner`].
const ROLE_OWNER: u8 = 1;
/// Encoding of [`Role::Admin`].
const ROLE_ADMIN: u8 = 2;
/// Encoding of [`Role::Member`].
const ROLE_MEMBER: u8 = 3;
/// A user message (no system event).
const SYSTEM_NONE: u8 = 0;
/// Tag of [`SystemEvent::GroupCreated`].
const SYSTEM_GROUP_CREATED: u8 = 1;
/// Tag of [`SystemEvent::MembersAdded`].
const SYSTEM_MEMBERS_ADDED: u8 = 2;
/// Tag of [`SystemEvent::MemberRemoved`].
const SYSTEM_MEMBER_REMOVED: u8 = 3;
/// Tag of [`SystemEvent::MemberLeft`].
const SYSTEM_MEMBER_LEFT: u8 = 4;
/// Tag of [`SystemEvent::RoleChanged`].
const SYSTEM_ROLE_CHANGED: u8 = 5;
/// Tag of [`SystemEvent::Renamed`].
const SYSTEM_RENAMED: u8 = 6;
/// Tag of [`SystemEvent::OwnerChanged`].
const SYSTEM_OWNER_CHANGED: u8 = 7;
/// Width of a token hash, in bytes.
const TOKEN_HASH_BYTES: usize = 32;

/// Appends fields to a buffer.
struct Enc(Vec<u8>);

impl Enc {
    fn new(capacity_bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity_bytes + 1);
        buf.push(RECORD_FORMAT_V2);
        Self(buf)
    }

    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        // Every field we store is validated far below 4 GiB (texts are at most 400 KB).
        assert!(
            v.len() <= u32::MAX as usize,
            "field of {} bytes does not fit the codec",
            v.len()
        );
        self.0.extend_from_slice(&(v.len() as u32).to_be_bytes());
        self.0.extend_from_slice(v);
        self
    }

    fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }

    /// A count followed by that many user ids.
    fn users(&mut self, v: &[UserId]) -> &mut Self {
        self.u64(v.len() as u64);
        for u in v {
            self.u64(u.0);
        }
        self
    }

    fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }
}

/// Reads fields back, failing with `Corrupt` on any mismatch.
struct Dec<'a> {
    /// What is being decoded, for error messages.
    what: &'static str,
    /// The bytes not yet consumed.
    rest: &'a [u8],
}

impl<'a> Dec<'a> {
    fn new(what: &'static str, bytes: &'a [u8]) -> Result<Self, StoreError> {
        let mut dec = Self { what, rest: bytes };
        match dec.u8()? {
            RECORD_FORMAT_V2 => Ok(dec),
            other => Err(dec.corrupt(&format!("unknown record format {other}"))),
        }
    }

    fn corrupt(&self, why: &str) -> StoreError {
        StoreError::Corrupt(format!("{}: {why}", self.what))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.rest.len() < n {
            return Err(self.corrupt("truncated"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, StoreError> {
        let what = self.what;
        be_u64(self.take(8)?, what)
    }

    fn bytes(&mut self) -> Result<&'a [u8], StoreError> {
        let len = self.take(4)?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        self.take(len)
    }

    fn string(&mut self) -> Result<String, StoreError> {
        let raw = self.bytes()?;
        String::from_utf8(raw.to_vec()).map_err(|_| self.corrupt("invalid UTF-8"))
    }

    fn flag(&mut self) -> Result<bool, StoreError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.corrupt("flag is not 0 or 1")),
        }
    }

    fn role(&mut self) -> Result<Role, StoreError> {
        match self.u8()? {
            ROLE_OWNER => Ok(Role::Owner),
            ROLE_ADMIN => Ok(Role::Admin),
            ROLE_MEMBER => Ok(Role::Member),
            _ => Err(self.corrupt("unknown role")),
        }
    }

    /// Reads what [`Enc::users`] wrote.
    fn users(&mut self) -> Result<Vec<UserId>, StoreError> {
        let count = self.u64()?;
        // Bound the allocation by what the record can actually hold.
        if count > (self.rest.len() / 8) as u64 {
            return Err(self.corrupt("user count exceeds record"));
        }
        (0..count).map(|_| self.u64().map(UserId)).collect()
    }

    fn done(self) -> Result<(), StoreError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(self.corrupt("trailing bytes"))
        }
    }
}

/// Encodes a `users` value.
pub(crate) fn encode_user(u: &User) -> Vec<u8> {
    Enc::new(8 + 4 + u.username.len() + 4 + u.password_hash.len() + 8)
        .u64(u.id.0)
        .str(&u.username)
        .str(&u.password_hash)
        .u64(u.created_ms)
        .finish()
}

/// Decodes a `users` value.
pub(crate) fn decode_user(bytes: &[u8]) -> Result<User, StoreError> {
    let mut d = Dec::new("user", bytes)?;
    let user = User {
        id: UserId(d.u64()?),
        username: d.string()?,
        password_hash: d.string()?,
        created_ms: d.u64()?,
    };
    d.done()?;
    Ok(user)
}

/// Encodes a `devices` value.
pub(crate) fn encode_device(dev: &Device) -> Vec<u8> {
    Enc::new(8 + 8 + 4 + dev.name.len() + 4 + TOKEN_HASH_BYTES + 8 + 1)
        .u64(dev.id.0)
        .u64(dev.user_id.0)
        .str(&dev.name)
        .bytes(&dev.token_hash)
        .u64(dev.cursor.0)
        .u8(u8::from(dev.revoked))
        .finish()
}

/// Decodes a `devices` value.
pub(crate) fn decode_device(bytes: &[u8]) -> Result<Device, StoreError> {
    let mut d = Dec::new("device", bytes)?;
    let id = DeviceId(d.u64()?);
    let user_id = UserId(d.u64()?);
    let name = d.string()?;
    let token_hash: [u8; TOKEN_HASH_BYTES] = d
        .bytes()?
        .try_into()
        .map_err(|_| StoreError::Corrupt("device: token hash is not 32 bytes".into()))?;
    let cursor = Cursor(d.u64()?);
    let revoked = d.flag()?;
    d.done()?;
    Ok(Device {
        id,
        user_id,
        name,
        token_hash,
        cursor,
        revoked,
    })
}

/// Encodes a `convs` value.
pub(crate) fn encode_conversation(c: &Conversation) -> Vec<u8> {
    let kind = match c.kind {
        ConversationKind::Direct => KIND_DIRECT,
        ConversationKind::Group => KIND_GROUP,
    };
    let mut enc = Enc::new(8 + 1 + 8 + 4 + c.name.len() + 8 + 8 + 8 + 8 * c.members.len());
    enc.u64(c.id.0)
        .u8(kind)
        .u64(c.created_ms)
        .str(&c.name)
        // Ids start at 1, so 0 means "no owner".
        .u64(c.owner.map_or(0, |o| o.0))
        .u64(u64::from(c.member_count))
        .users(&c.members);
    enc.finish()
}

/// Decodes a `convs` value.
pub(crate) fn decode_conversation(bytes: &[u8]) -> Result<Conversation, StoreError> {
    let mut d = Dec::new("conversation", bytes)?;
    let id = ConversationId(d.u64()?);
    let kind = match d.u8()? {
        KIND_DIRECT => ConversationKind::Direct,
        KIND_GROUP => ConversationKind::Group,
        _ => return Err(d.corrupt("unknown kind")),
    };
    let created_ms = d.u64()?;
    let name = d.string()?;
    let owner = match d.u64()? {
        0 => None,
        o => Some(UserId(o)),
    };
    let member_count =
        u32::try_from(d.u64()?).map_err(|_| d.corrupt("member count exceeds u32"))?;
    let members = d.users()?;
    d.done()?;
    Ok(Conversation {
        id,
        kind,
        name,
        owner,
        member_count,
        members,
        created_ms,
    })
}

/// Encodes a `messages` value. Conversation and seq live in the key, not here. The sender comes
/// first so that unread counting can read it without decoding the rest.
pub(crate) fn encode_message(m: &Message) -> Vec<u8> {
    let mut enc = Enc::new(8 + 8 + 4 + m.client_msg_id.as_str().len() + 4 + m.text.len() + 1);
    enc.u64(m.sender_id.0)
        .u64(m.ts_ms)
        .str(m.client_msg_id.as_str())
        .str(&m.text);
    match &m.system {
        None => {
            enc.u8(SYSTEM_NONE);
        }
        Some(SystemEvent::GroupCreated {
            actor,
            name,
            members,
        }) => {
            enc.u8(SYSTEM_GROUP_CREATED)
                .u64(actor.0)
                .str(name)
                .users(members);
        }
        Some(SystemEvent::MembersAdded { actor, users }) => {
            enc.u8(SYSTEM_MEMBERS_ADDED).u64(actor.0).users(users);
        }
        Some(SystemEvent::MemberRemoved { actor, user }) => {
            enc.u8(SYSTEM_MEMBER_REMOVED).u64(actor.0).u64(user.0);
        }
        Some(SystemEvent::MemberLeft { user }) => {
            enc.u8(SYSTEM_MEMBER_LEFT).u64(user.0);
        }
        Some(SystemEvent::RoleChanged { actor, user, role }) => {
            enc.u8(SYSTEM_ROLE_CHANGED)
                .u64(actor.0)
                .u64(user.0)
                .u8(role_byte(*role));
        }
        Some(SystemEvent::Renamed { actor, name }) => {
            enc.u8(SYSTEM_RENAMED).u64(actor.0).str(name);
        }
        Some(SystemEvent::OwnerChanged { user }) => {
            enc.u8(SYSTEM_OWNER_CHANGED).u64(user.0);
        }
    }
    enc.finish()
}

/// Decodes a `messages` entry from its key (`conv ‖ seq`) and value.
pub(crate) fn decode_message(key: &[u8], bytes: &[u8]) -> Result<Message, StoreError> {
    let (conv, seq) = parse_pair(key, "message key")?;
    let mut d = Dec::new("message", bytes)?;
    let sender_id = UserId(d.u64()?);
    let ts_ms = d.u64()?;
    let client_msg_id =
        ClientMsgId::new(d.string()?).map_err(|_| d.corrupt("invalid client_msg_id"))?;
    let text = d.string()?;
    let system = match d.u8()? {
        SYSTEM_NONE => None,
        SYSTEM_GROUP_CREATED => Some(SystemEvent::GroupCreated {
            actor: UserId(d.u64()?),
            name: d.string()?,
            members: d.users()?,
        }),
        SYSTEM_MEMBERS_ADDED => Some(SystemEvent::MembersAdded {
            actor: UserId(d.u64()?),
            users: d.users()?,
        }),
        SYSTEM_MEMBER_REMOVED => Some(SystemEvent::MemberRemoved {
            actor: UserId(d.u64()?),
            user: UserId(d.u64()?),
        }),
        SYSTEM_MEMBER_LEFT => Some(SystemEvent::MemberLeft {
            user: UserId(d.u64()?),
        }),
        SYSTEM_ROLE_CHANGED => Some(SystemEvent::RoleChanged {
            actor: UserId(d.u64()?),
            user: UserId(d.u64()?),
            role: d.role()?,
        }),
        SYSTEM_RENAMED => Some(SystemEvent::Renamed {
            actor: UserId(d.u64()?),
            name: d.string()?,
        }),
        SYSTEM_OWNER_CHANGED => Some(SystemEvent::OwnerChanged {
            user: UserId(d.u64()?),
        }),
        _ => return Err(d.corrupt("unknown system event tag")),
    };
    d.done()?;
    Ok(Message {
        conversation_id: ConversationId(conv),
        seq: Seq(seq),
        sender_id,
        client_msg_id,
        text,
        system,
        ts_ms,
    })
}

/// Reads only the sender of a `messages` value (for unread counts, which scan many messages).
pub(crate) fn decode_message_sender(bytes: &[u8]) -> Result<UserId, StoreError> {
    let mut d = Dec::new("message", bytes)?;
    Ok(UserId(d.u64()?))
}

/// Encodes a `members` value. Conversation and user live in the key.
pub(crate) fn encode_member(m: &Member) -> Vec<u8> {
    Enc::new(1 + 8 + 8 + 1)
        .u8(role_byte(m.role))
        .u64(m.joined_seq.0)
        .u64(m.read_seq.0)
        .u8(u8::from(m.muted))
        .finish()
}

/// Decodes a `members` entry from its key (`conv ‖ user`) and value.
pub(crate) fn decode_member(key: &[u8], bytes: &[u8]) -> Result<Member, StoreError> {
    let (conv, user) = parse_pair(key, "member key")?;
    let mut d = Dec::new("member", bytes)?;
    let role = d.role()?;
    let joined_seq = Seq(d.u64()?);
    let read_seq = Seq(d.u64()?);
    let muted = d.flag()?;
    d.done()?;
    Ok(Member {
        conversation_id: ConversationId(conv),
        user_id: UserId(user),
        role,
        joined_seq,
        read_seq,
        muted,
    })
}

/// Encodes a `friend_requests` value.
pub(crate) fn encode_friend_request(r: &FriendRequest) -> Vec<u8> {
    Enc::new(8 + 8 + 8 + 4 + r.message.len() + 8)
        .u64(r.id.0)
        .u64(r.from.0)
        .u64(r.to.0)
        .str(&r.message)
        .u64(r.ts_ms)
        .finish()
}

/// Decodes a `friend_requests` value.
pub(crate) fn decode_friend_request(bytes: &[u8]) -> Result<FriendRequest, StoreError> {
    let mut d = Dec::new("friend request", bytes)?;
    let r = friend_request_fields(&mut d)?;
    d.done()?;
    Ok(r)
}

fn friend_request_fields(d: &mut Dec<'_>) -> Result<FriendRequest, StoreError> {
    Ok(FriendRequest {
        id: RequestId(d.u64()?),
        from: UserId(d.u64()?),
        to: UserId(d.u64()?),
        message: d.string()?,
        ts_ms: d.u64()?,
    })
}

fn role_byte(role: Role) -> u8 {
    match role {
        Role::Owner => ROLE_OWNER,
        Role::Admin => ROLE_ADMIN,
        Role::Member => ROLE_MEMBER,
    }
}

/// Encodes a `tokens` value: the holders' ids as big-endian u64s, ascending, no header (an
/// index entry, rebuilt from `devices` if its layout ever changes).
pub(crate) fn encode_device_ids(ids: &[DeviceId]) -> Vec<u8> {
    debug_assert!(ids.windows(2).all(|w| w[0] < w[1]), "token holders ascend");
    ids.iter().flat_map(|id| id.to_be_bytes()).collect()
}

/// Decodes a `tokens` value.
pub(crate) fn decode_device_ids(bytes: &[u8]) -> Result<Vec<DeviceId>, StoreError> {
    if !bytes.len().is_multiple_of(8) {
        return Err(StoreError::Corrupt(format!(
            "tokens value of {} bytes",
            bytes.len()
        )));
    }
    bytes
        .chunks_exact(8)
        .map(|c| be_u64(c, "tokens value").map(DeviceId))
        .collect()
}

/// An inbox entry as stored: messages by reference, so a long text is stored once, not once
/// per member; everything else inline (small, and a friend request outlives its record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoredEvent {
    /// The message at `conv ‖ seq` in `messages`.
    Message(ConversationId, Seq),
    /// Anything else, exactly as delivered.
    Inline(EventPayload),
}

impl StoredEvent {
    /// How `payload` is stored.
    pub(crate) fn of(payload: &EventPayload) -> StoredEvent {
        match payload {
            EventPayload::Message(m) => StoredEvent::Message(m.conversation_id, m.seq),
            other => StoredEvent::Inline(other.clone()),
        }
    }
}

/// Encodes an `inbox` value.
pub(crate) fn encode_event(e: &StoredEvent) -> Vec<u8> {
    let mut enc = Enc::new(1 + 24);
    match e {
        StoredEvent::Message(conv, seq) => {
            enc.u8(EVENT_TAG_MESSAGE);
            enc.0.extend_from_slice(&pair(conv.0, seq.0));
        }
        StoredEvent::Inline(EventPayload::Message(m)) => {
            enc.u8(EVENT_TAG_MESSAGE);
            enc.0.extend_from_slice(&pair(m.conversation_id.0, m.seq.0));
        }
        StoredEvent::Inline(EventPayload::FriendRequest(r)) => {
            enc.u8(EVENT_TAG_FRIEND_REQUEST)
                .u64(r.id.0)
                .u64(r.from.0)
                .u64(r.to.0)
                .str(&r.message)
                .u64(r.ts_ms);
        }
        StoredEvent::Inline(EventPayload::FriendAdded {
            user_id,
            conversation_id,
        }) => {
            enc.u8(EVENT_TAG_FRIEND_ADDED)
                .u64(user_id.0)
                .u64(conversation_id.0);
        }
        StoredEvent::Inline(EventPayload::GroupJoined { conversation_id }) => {
            enc.u8(EVENT_TAG_GROUP_JOINED).u64(conversation_id.0);
        }
        StoredEvent::Inline(EventPayload::GroupLeft { conversation_id }) => {
            enc.u8(EVENT_TAG_GROUP_LEFT).u64(conversation_id.0);
        }
        StoredEvent::Inline(EventPayload::Read {
            conversation_id,
            read_seq,
        }) => {
            enc.u8(EVENT_TAG_READ)
                .u64(conversation_id.0)
                .u64(read_seq.0);
        }
        StoredEvent::Inline(EventPayload::Receipt {
            conversation_id,
            user_id,
            read_seq,
        }) => {
            enc.u8(EVENT_TAG_RECEIPT)
                .u64(conversation_id.0)
                .u64(user_id.0)
                .u64(read_seq.0);
        }
    }
    enc.finish()
}

/// Decodes an `inbox` value.
pub(crate) fn decode_event(bytes: &[u8]) -> Result<StoredEvent, StoreError> {
    let mut d = Dec::new("inbox event", bytes)?;
    let event = match d.u8()? {
        EVENT_TAG_MESSAGE => StoredEvent::Message(ConversationId(d.u64()?), Seq(d.u64()?)),
        EVENT_TAG_FRIEND_REQUEST => {
            StoredEvent::Inline(EventPayload::FriendRequest(friend_request_fields(&mut d)?))
        }
        EVENT_TAG_FRIEND_ADDED => StoredEvent::Inline(EventPayload::FriendAdded {
            user_id: UserId(d.u64()?),
            conversation_id: ConversationId(d.u64()?),
        }),
        EVENT_TAG_GROUP_JOINED => StoredEvent::Inline(EventPayload::GroupJoined {
            conversation_id: ConversationId(d.u64()?),
        }),
        EVENT_TAG_GROUP_LEFT => StoredEvent::Inline(EventPayload::GroupLeft {
            conversation_id: ConversationId(d.u64()?),
        }),
        EVENT_TAG_READ => StoredEvent::Inline(EventPayload::Read {
            conversation_id: ConversationId(d.u64()?),
            read_seq: Seq(d.u64()?),
        }),
        EVENT_TAG_RECEIPT => StoredEvent::Inline(EventPayload::Receipt {
            conversation_id: ConversationId(d.u64()?),
            user_id: UserId(d.u64()?),
            read_seq: Seq(d.u64()?),
        }),
        _ => return Err(d.corrupt("unknown event tag")),
    };
    d.done()?;
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fjall::keys::message_key;

    #[test]
    fn records_round_trip() {
        let user = User {
            id: UserId(3),
            username: "ann".into(),
            password_hash: "$argon".into(),
            created_ms: 9,
        };
        assert_eq!(decode_user(&encode_user(&user)).unwrap(), user);

        let dev = Device {
            id: DeviceId(4),
            user_id: UserId(3),
            name: "laptop".into(),
            token_hash: [7; 32],
            cursor: Cursor(11),
            revoked: true,
        };
        assert_eq!(decode_device(&encode_device(&dev)).unwrap(), dev);

        for conv in [
            Conversation {
                id: ConversationId(5),
                kind: ConversationKind::Direct,
                name: String::new(),
                owner: None,
                member_count: 2,
                members: vec![UserId(1), UserId(3)],
                created_ms: 12,
            },
            Conversation {
                id: ConversationId(6),
                kind: ConversationKind::Group,
                name: "tëam".into(),
                owner: Some(UserId(4)),
                member_count: 10_000,
                members: Vec::new(),
                created_ms: 14,
            },
        ] {
            assert_eq!(
                decode_conversation(&encode_conversation(&conv)).unwrap(),
                conv
            );
        }

        let msg = Message {
            conversation_id: ConversationId(5),
            seq: Seq(6),
            sender_id: UserId(1),
            client_msg_id: ClientMsgId::new("c-1").unwrap(),
            text: "héllo".repeat(1000),
            system: None,
            ts_ms: 13,
        };
        let key = message_key(msg.conversation_id, msg.seq);
        assert_eq!(decode_message(&key, &encode_message(&msg)).unwrap(), msg);
        assert_eq!(
            decode_message_sender(&encode_message(&msg)).unwrap(),
            UserId(1)
        );
        let (a, b) = (UserId(1), UserId(2));
        for event in [
            SystemEvent::GroupCreated {
                actor: a,
                name: "g".into(),
                members: vec![a, b],
            },
            SystemEvent::MembersAdded {
                actor: a,
                users: vec![b],
            },
            SystemEvent::MemberRemoved { actor: a, user: b },
            SystemEvent::MemberLeft { user: b },
            SystemEvent::RoleChanged {
                actor: a,
                user: b,
                role: Role::Admin,
            },
            SystemEvent::Renamed {
                actor: a,
                name: "h".into(),
            },
            SystemEvent::OwnerChanged { user: b },
        ] {
            let sys = Message {
                text: String::new(),
                system: Some(event),
                ..msg.clone()
            };
            assert_eq!(decode_message(&key, &encode_message(&sys)).unwrap(), sys);
        }

        for role in [Role::Owner, Role::Admin, Role::Member] {
            let m = Member {
                conversation_id: ConversationId(5),
                user_id: UserId(7),
                role,
                joined_seq: Seq(3),
                read_seq: Seq(9),
                muted: role == Role::Admin,
            };
            let key = crate::fjall::keys::member_key(m.conversation_id, m.user_id);
            assert_eq!(decode_member(&key, &encode_member(&m)).unwrap(), m);
        }

        let request = FriendRequest {
            id: RequestId(8),
            from: a,
            to: b,
            message: "hi ✋".into(),
            ts_ms: 15,
        };
        assert_eq!(
            decode_friend_request(&encode_friend_request(&request)).unwrap(),
            request
        );

        let ids = vec![DeviceId(2), DeviceId(300)];
        assert_eq!(decode_device_ids(&encode_device_ids(&ids)).unwrap(), ids);
        assert!(decode_device_ids(&[0; 9]).is_err());

        let (c, s) = (ConversationId(5), Seq(6));
        for ev in [
            StoredEvent::Message(c, s),
            StoredEvent::Inline(EventPayload::FriendRequest(request)),
            StoredEvent::Inline(EventPayload::FriendAdded {
                user_id: a,
                conversation_id: c,
            }),
            StoredEvent::Inline(EventPayload::GroupJoined { conversation_id: c }),
            StoredEvent::Inline(EventPayload::GroupLeft { conversation_id: c }),
            StoredEvent::Inline(EventPayload::Read {
                conversation_id: c,
                read_seq: s,
            }),
            StoredEvent::Inline(EventPayload::Receipt {
                conversation_id: c,
                user_id: b,
                read_seq: s,
            }),
        ] {
            assert_eq!(decode_event(&encode_event(&ev)).unwrap(), ev);
        }
        let shared = EventPayload::Message(std::sync::Arc::new(msg.clone()));
        assert_eq!(
            decode_event(&encode_event(&StoredEvent::of(&shared))).unwrap(),
            StoredEvent::Message(c, s),
            "messages are stored by reference"
        );
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        let user = encode_user(&User {
            id: UserId(1),
            username: "a".into(),
            password_hash: "b".into(),
            created_ms: 0,
        });
        for cut in 0..user.len() {
            assert!(matches!(
                decode_user(&user[..cut]),
                Err(StoreError::Corrupt(_))
            ));
        }
        let mut long = user.clone();
        long.push(0);
        assert!(matches!(decode_user(&long), Err(StoreError::Corrupt(_))));
        let mut wrong_format = user;
        wrong_format[0] = 99;
        assert!(matches!(
            decode_user(&wrong_format),
            Err(StoreError::Corrupt(_))
        ));
        assert!(decode_conversation(&[
            1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255, 255, 255,
            255, 255
        ])
        .is_err());
        assert!(decode_event(&[1, 2]).is_err());
    }
}
