//! Value encoding: a small hand-written, length-prefixed binary format.
//!
//! Every record starts with a format byte so a later layout can be told apart from this one.
//! Integers are big-endian u64, strings are a big-endian u32 byte length followed by UTF-8.
//! Decoding never panics: anything unexpected is [`StoreError::Corrupt`].

use magpie_core::{
    ClientMsgId, Conversation, ConversationId, ConversationKind, Cursor, Device, DeviceId, Message,
    Seq, User, UserId,
};

use crate::fjall::keys::{be_u64, pair, parse_pair};
use crate::StoreError;

/// Format byte of every record written by this version.
const RECORD_FORMAT_V1: u8 = 1;
/// Tag of an inbox event that references a message.
const EVENT_TAG_MESSAGE: u8 = 1;
/// Encoding of [`ConversationKind::Direct`].
const KIND_DIRECT: u8 = 1;
/// Width of a token hash, in bytes.
const TOKEN_HASH_BYTES: usize = 32;

/// Appends fields to a buffer.
struct Enc(Vec<u8>);

impl Enc {
    fn new(capacity_bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity_bytes + 1);
        buf.push(RECORD_FORMAT_V1);
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
            RECORD_FORMAT_V1 => Ok(dec),
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
    let revoked = match d.u8()? {
        0 => false,
        1 => true,
        _ => return Err(d.corrupt("revoked flag is not 0 or 1")),
    };
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
    };
    let mut enc = Enc::new(8 + 1 + 8 + 8 + 8 * c.members.len());
    enc.u64(c.id.0)
        .u8(kind)
        .u64(c.created_ms)
        .u64(c.members.len() as u64);
    for m in &c.members {
        enc.u64(m.0);
    }
    enc.finish()
}

/// Decodes a `convs` value.
pub(crate) fn decode_conversation(bytes: &[u8]) -> Result<Conversation, StoreError> {
    let mut d = Dec::new("conversation", bytes)?;
    let id = ConversationId(d.u64()?);
    let kind = match d.u8()? {
        KIND_DIRECT => ConversationKind::Direct,
        _ => return Err(d.corrupt("unknown kind")),
    };
    let created_ms = d.u64()?;
    let count = d.u64()?;
    // Bound the allocation by what the record can actually hold.
    if count > (d.rest.len() / 8) as u64 {
        return Err(d.corrupt("member count exceeds record"));
    }
    let members = (0..count)
        .map(|_| d.u64().map(UserId))
        .collect::<Result<Vec<_>, _>>()?;
    d.done()?;
    Ok(Conversation {
        id,
        kind,
        members,
        created_ms,
    })
}

/// Encodes a `messages` value. Conversation and seq live in the key, not here.
pub(crate) fn encode_message(m: &Message) -> Vec<u8> {
    Enc::new(8 + 8 + 4 + m.client_msg_id.as_str().len() + 4 + m.text.len())
        .u64(m.sender_id.0)
        .u64(m.ts_ms)
        .str(m.client_msg_id.as_str())
        .str(&m.text)
        .finish()
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
    d.done()?;
    Ok(Message {
        conversation_id: ConversationId(conv),
        seq: Seq(seq),
        sender_id,
        client_msg_id,
        text,
        ts_ms,
    })
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

/// An inbox entry as stored: a reference, so a long text is stored once, not once per member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoredEvent {
    /// The message at `conv ‖ seq` in `messages`.
    Message(ConversationId, Seq),
}

/// Encodes an `inbox` value.
pub(crate) fn encode_event(e: StoredEvent) -> Vec<u8> {
    match e {
        StoredEvent::Message(conv, seq) => {
            let mut enc = Enc::new(1 + 16);
            enc.u8(EVENT_TAG_MESSAGE);
            enc.0.extend_from_slice(&pair(conv.0, seq.0));
            enc.finish()
        }
    }
}

/// Decodes an `inbox` value.
pub(crate) fn decode_event(bytes: &[u8]) -> Result<StoredEvent, StoreError> {
    let mut d = Dec::new("inbox event", bytes)?;
    match d.u8()? {
        EVENT_TAG_MESSAGE => {
            let conv = ConversationId(d.u64()?);
            let seq = Seq(d.u64()?);
            d.done()?;
            Ok(StoredEvent::Message(conv, seq))
        }
        _ => Err(d.corrupt("unknown event tag")),
    }
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

        let conv = Conversation {
            id: ConversationId(5),
            kind: ConversationKind::Direct,
            members: vec![UserId(1), UserId(3)],
            created_ms: 12,
        };
        assert_eq!(
            decode_conversation(&encode_conversation(&conv)).unwrap(),
            conv
        );

        let msg = Message {
            conversation_id: ConversationId(5),
            seq: Seq(6),
            sender_id: UserId(1),
            client_msg_id: ClientMsgId::new("c-1").unwrap(),
            text: "héllo".repeat(1000),
            ts_ms: 13,
        };
        let key = message_key(msg.conversation_id, msg.seq);
        assert_eq!(decode_message(&key, &encode_message(&msg)).unwrap(), msg);

        let ids = vec![DeviceId(2), DeviceId(300)];
        assert_eq!(decode_device_ids(&encode_device_ids(&ids)).unwrap(), ids);
        assert!(decode_device_ids(&[0; 9]).is_err());

        let ev = StoredEvent::Message(ConversationId(5), Seq(6));
        assert_eq!(decode_event(&encode_event(ev)).unwrap(), ev);
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
