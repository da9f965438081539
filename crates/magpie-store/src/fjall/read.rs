//! Reads against the durable snapshot. These run on tokio's blocking pool, never on the writer
//! thread, and see exactly the batches whose fsync has returned (see `Shared::durable`).

use std::ops::Bound;
use std::sync::Arc;

use fjall::{Readable, Snapshot};
use magpie_core::{
    Conversation, ConversationId, Cursor, Device, DeviceId, Event, EventPayload, Message, Seq,
    User, UserId,
};

use crate::fjall::codec::{
    decode_conversation, decode_device, decode_device_ids, decode_event, decode_message,
    decode_user, StoredEvent,
};
use crate::fjall::keys::{
    be_u64, conv_key, device_key, inbox_key, message_key, parse_pair, user_key, Keyspaces, Ks,
};
use crate::{MessageRange, StoreError};

/// A consistent view: the keyspace handles plus the snapshot to read them at.
pub(crate) struct View<'a> {
    /// Where the data lives.
    pub(crate) ks: &'a Keyspaces,
    /// The instant to read at.
    pub(crate) snap: &'a Snapshot,
}

impl View<'_> {
    fn get(&self, ks: Ks, key: &[u8]) -> Result<Option<fjall::Slice>, StoreError> {
        Ok(self.snap.get(self.ks.get(ks), key)?)
    }

    pub(crate) fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError> {
        self.get(Ks::Users, &user_key(id))?
            .map(|v| decode_user(&v))
            .transpose()
    }

    pub(crate) fn user_by_name(&self, name: &str) -> Result<Option<User>, StoreError> {
        let Some(id) = self.get(Ks::Usernames, name.as_bytes())? else {
            return Ok(None);
        };
        let id = UserId(be_u64(&id, "usernames value")?);
        match self.user_by_id(id)? {
            Some(user) => Ok(Some(user)),
            None => Err(StoreError::Corrupt(format!(
                "username {name:?} points to missing user {id}"
            ))),
        }
    }

    pub(crate) fn device(&self, id: DeviceId) -> Result<Option<Device>, StoreError> {
        self.get(Ks::Devices, &device_key(id))?
            .map(|v| decode_device(&v))
            .transpose()
    }

    pub(crate) fn device_by_token(
        &self,
        token_hash: &[u8; 32],
    ) -> Result<Option<Device>, StoreError> {
        let Some(holders) = self.get(Ks::Tokens, token_hash)? else {
            return Ok(None);
        };
        // Oldest unrevoked holder first (there is one unless token hashes collided).
        let Some(&id) = decode_device_ids(&holders)?.first() else {
            return Err(StoreError::Corrupt("empty token entry".into()));
        };
        match self.device(id)? {
            // The writer removes revoked devices from the entry; the check guards that anyway.
            Some(dev) if !dev.revoked && dev.token_hash == *token_hash => Ok(Some(dev)),
            Some(_) => Err(StoreError::Corrupt(format!(
                "token entry lists device {id}, which does not hold it"
            ))),
            None => Err(StoreError::Corrupt(format!(
                "token points to missing device {id}"
            ))),
        }
    }

    pub(crate) fn conversation(
        &self,
        id: ConversationId,
    ) -> Result<Option<Conversation>, StoreError> {
        self.get(Ks::Convs, &conv_key(id))?
            .map(|v| decode_conversation(&v))
            .transpose()
    }

    /// The existing direct conversation of `a` and `b`, if any.
    pub(crate) fn direct(&self, a: UserId, b: UserId) -> Result<Option<Conversation>, StoreError> {
        let Some(id) = self.get(Ks::Directs, &crate::fjall::keys::direct_key(a, b))? else {
            return Ok(None);
        };
        let id = ConversationId(be_u64(&id, "directs value")?);
        match self.conversation(id)? {
            Some(conv) => Ok(Some(conv)),
            None => Err(StoreError::Corrupt(format!(
                "direct pair points to missing conversation {id}"
            ))),
        }
    }

    pub(crate) fn message(
        &self,
        conv: ConversationId,
        seq: Seq,
    ) -> Result<Option<Message>, StoreError> {
        let key = message_key(conv, seq);
        self.get(Ks::Messages, &key)?
            .map(|v| decode_message(&key, &v))
            .transpose()
    }

    pub(crate) fn messages(
        &self,
        conv: ConversationId,
        range: MessageRange,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let ks = self.ks.get(Ks::Messages);
        let lo = Bound::Included(message_key(conv, Seq(0)));
        let hi = Bound::Included(message_key(conv, Seq(u64::MAX)));
        let (iter, newest_first) = match range {
            MessageRange::After(seq) => (
                self.snap
                    .range(ks, (Bound::Excluded(message_key(conv, seq)), hi)),
                false,
            ),
            MessageRange::Before(seq) => (
                self.snap
                    .range(ks, (lo, Bound::Excluded(message_key(conv, seq)))),
                true,
            ),
            MessageRange::Latest => (self.snap.prefix(ks, conv_key(conv)), true),
        };
        let decode = |guard: fjall::Guard| -> Result<Message, StoreError> {
            let (k, v) = guard.into_inner()?;
            decode_message(&k, &v)
        };
        let mut out = if newest_first {
            iter.rev()
                .take(limit)
                .map(decode)
                .collect::<Result<Vec<_>, _>>()?
        } else {
            iter.take(limit)
                .map(decode)
                .collect::<Result<Vec<_>, _>>()?
        };
        if newest_first {
            out.reverse();
        }
        Ok(out)
    }

    pub(crate) fn events(
        &self,
        user: UserId,
        after: Cursor,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let lo = Bound::Excluded(inbox_key(user, after));
        let hi = Bound::Included(inbox_key(user, Cursor(u64::MAX)));
        let mut out = Vec::with_capacity(limit.min(256));
        for guard in self
            .snap
            .range(self.ks.get(Ks::Inbox), (lo, hi))
            .take(limit)
        {
            let (k, v) = guard.into_inner()?;
            let (_, cursor) = parse_pair(&k, "inbox key")?;
            let payload = match decode_event(&v)? {
                StoredEvent::Message(conv, seq) => match self.message(conv, seq)? {
                    Some(m) => EventPayload::Message(Arc::new(m)),
                    None => {
                        return Err(StoreError::Corrupt(format!(
                            "inbox {user}/{cursor} refers to missing message {conv}/{seq}"
                        )))
                    }
                },
            };
            out.push(Event {
                cursor: Cursor(cursor),
                payload,
            });
        }
        Ok(out)
    }

    pub(crate) fn inbox_head(&self, user: UserId) -> Result<Cursor, StoreError> {
        inbox_head_of(self.snap.prefix(self.ks.get(Ks::Inbox), user_key(user)))
    }
}

/// The cursor of the last key of an inbox prefix iterator (0 if empty). Shared with the writer,
/// which loads its head cache the same way from the live keyspace.
pub(crate) fn inbox_head_of(
    mut iter: impl DoubleEndedIterator<Item = fjall::Guard>,
) -> Result<Cursor, StoreError> {
    match iter.next_back() {
        Some(guard) => Ok(Cursor(parse_pair(&guard.key()?, "inbox key")?.1)),
        None => Ok(Cursor(0)),
    }
}
