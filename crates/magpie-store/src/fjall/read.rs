//! Reads against the durable snapshot. These run on tokio's blocking pool, never on the writer
//! thread, and see exactly the batches whose fsync has returned (see `Shared::durable`).

use std::ops::Bound;
use std::sync::Arc;

use fjall::{Readable, Snapshot};
use magpie_core::limits::PageText;
use magpie_core::{
    Conversation, ConversationId, Cursor, Device, DeviceId, Event, EventPayload, FriendRequest,
    Member, Message, RequestId, Seq, User, UserId,
};

use crate::fjall::codec::{
    decode_conversation, decode_device, decode_device_ids, decode_event, decode_friend_request,
    decode_member, decode_message, decode_message_sender, decode_user, StoredEvent,
};
use crate::fjall::keys::{
    be_u64, conv_key, device_key, friend_key, inbox_key, member_key, message_key, parse_pair,
    request_key, user_key, Keyspaces, Ks,
};
use crate::memory::{count_unread, sort_summaries, UNREAD_SCAN_BYTES_MAX};
use crate::{ConversationSummary, Friend, MessageRange, StoreError};

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

    /// The message a dedup key (sender ‖ client message id) points to.
    pub(crate) fn sent_message(&self, dedup_key: &[u8]) -> Result<Option<Message>, StoreError> {
        let Some(target) = self.get(Ks::Dedup, dedup_key)? else {
            return Ok(None);
        };
        let (cid, seq) = parse_pair(&target, "dedup value")?;
        match self.message(ConversationId(cid), Seq(seq))? {
            Some(m) => Ok(Some(m)),
            None => Err(StoreError::Corrupt(format!(
                "dedup entry points to missing message {cid}/{seq}"
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
        let iter: Box<dyn Iterator<Item = fjall::Guard>> = if newest_first {
            Box::new(iter.rev())
        } else {
            Box::new(iter)
        };
        let mut out = Vec::with_capacity(limit.min(256));
        let mut text = PageText::default();
        for guard in iter.take(limit) {
            let m = decode(guard)?;
            let more = text.take(m.text.len());
            out.push(m);
            if !more {
                break;
            }
        }
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
        let mut text = PageText::default();
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
                StoredEvent::Inline(payload) => payload,
            };
            let event = Event {
                cursor: Cursor(cursor),
                payload,
            };
            let more = text.take(event.text_bytes());
            out.push(event);
            if !more {
                break;
            }
        }
        Ok(out)
    }

    /// When each user was last connected (0 if never recorded).
    pub(crate) fn last_seen(&self, users: &[UserId]) -> Result<Vec<u64>, StoreError> {
        users
            .iter()
            .map(|&u| match self.get(Ks::LastSeen, &user_key(u))? {
                Some(v) => be_u64(&v, "last seen"),
                None => Ok(0),
            })
            .collect()
    }

    pub(crate) fn inbox_head(&self, user: UserId) -> Result<Cursor, StoreError> {
        inbox_head_of(self.snap.prefix(self.ks.get(Ks::Inbox), user_key(user)))
    }

    /// The newest message of `conv`, if any.
    fn last_message(&self, conv: ConversationId) -> Result<Option<Message>, StoreError> {
        last_message_of(self.snap.prefix(self.ks.get(Ks::Messages), conv_key(conv)))
    }

    pub(crate) fn last_seq(&self, conv: ConversationId) -> Result<Seq, StoreError> {
        match self
            .snap
            .prefix(self.ks.get(Ks::Messages), conv_key(conv))
            .next_back()
        {
            Some(guard) => Ok(Seq(parse_pair(&guard.key()?, "message key")?.1)),
            None => Ok(Seq(0)),
        }
    }

    /// The second half of every key under `prefix` in `ks`, ascending.
    fn ids_under(&self, ks: Ks, prefix: [u8; 8]) -> Result<Vec<u64>, StoreError> {
        self.snap
            .prefix(self.ks.get(ks), prefix)
            .map(|guard| Ok(parse_pair(&guard.key()?, ks.name())?.1))
            .collect()
    }

    fn friend_request(&self, id: RequestId) -> Result<FriendRequest, StoreError> {
        match self.get(Ks::FriendRequests, &request_key(id))? {
            Some(v) => decode_friend_request(&v),
            None => Err(StoreError::Corrupt(format!(
                "request index refers to missing request {id}"
            ))),
        }
    }

    pub(crate) fn friend_requests(
        &self,
        user: UserId,
    ) -> Result<(Vec<FriendRequest>, Vec<FriendRequest>), StoreError> {
        let load = |ks| -> Result<Vec<FriendRequest>, StoreError> {
            self.ids_under(ks, user_key(user))?
                .into_iter()
                .map(|id| self.friend_request(RequestId(id)))
                .collect()
        };
        Ok((load(Ks::RequestsIn)?, load(Ks::RequestsOut)?))
    }

    pub(crate) fn friends(&self, user: UserId) -> Result<Vec<Friend>, StoreError> {
        self.snap
            .prefix(self.ks.get(Ks::Friends), user_key(user))
            .map(|guard| {
                let (k, v) = guard.into_inner()?;
                let (_, friend) = parse_pair(&k, "friends key")?;
                let (conv, since_ms) = parse_pair(&v, "friends value")?;
                Ok(Friend {
                    user_id: UserId(friend),
                    conversation_id: ConversationId(conv),
                    since_ms,
                })
            })
            .collect()
    }

    pub(crate) fn are_friends(&self, a: UserId, b: UserId) -> Result<bool, StoreError> {
        Ok(self.get(Ks::Friends, &friend_key(a, b))?.is_some())
    }

    pub(crate) fn member(
        &self,
        conv: ConversationId,
        user: UserId,
    ) -> Result<Option<Member>, StoreError> {
        let key = member_key(conv, user);
        self.get(Ks::Members, &key)?
            .map(|v| decode_member(&key, &v))
            .transpose()
    }

    /// A range scan over the conversation's member rows.
    pub(crate) fn members(
        &self,
        conv: ConversationId,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<Vec<Member>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let lo = match after {
            Some(after) => Bound::Excluded(member_key(conv, after)),
            None => Bound::Included(member_key(conv, UserId(0))),
        };
        let hi = Bound::Included(member_key(conv, UserId(u64::MAX)));
        self.snap
            .range(self.ks.get(Ks::Members), (lo, hi))
            .take(limit)
            .map(|guard| {
                let (k, v) = guard.into_inner()?;
                decode_member(&k, &v)
            })
            .collect()
    }

    pub(crate) fn conversations_of(
        &self,
        user: UserId,
    ) -> Result<Vec<ConversationSummary>, StoreError> {
        let mut out = Vec::new();
        // One bound on the messages read for all rows' unread counts together.
        let mut budget = UNREAD_SCAN_BYTES_MAX;
        for conv in self.ids_under(Ks::UserConvs, user_key(user))? {
            let conv = ConversationId(conv);
            let Some(summary) = self.conversation_summary_within(conv, user, &mut budget)? else {
                return Err(StoreError::Corrupt(format!(
                    "user_convs lists {user}/{conv} without its conversation or member row"
                )));
            };
            out.push(summary);
        }
        sort_summaries(&mut out);
        Ok(out)
    }

    /// `user`'s row for `conv` in the conversation list; `None` unless a member.
    pub(crate) fn conversation_summary(
        &self,
        conv: ConversationId,
        user: UserId,
    ) -> Result<Option<ConversationSummary>, StoreError> {
        let mut budget = UNREAD_SCAN_BYTES_MAX;
        self.conversation_summary_within(conv, user, &mut budget)
    }

    /// [`Self::conversation_summary`], its unread count reading from `budget` (see
    /// `memory::count_unread`).
    fn conversation_summary_within(
        &self,
        conv: ConversationId,
        user: UserId,
        budget: &mut usize,
    ) -> Result<Option<ConversationSummary>, StoreError> {
        let (Some(conversation), Some(member)) =
            (self.conversation(conv)?, self.member(conv, user)?)
        else {
            return Ok(None);
        };
        let last_message = self.last_message(conv)?;
        let last_seq = last_message.as_ref().map_or(Seq(0), |m| m.seq);
        let unread_count = self.unread_count(conv, user, member.read_seq, last_seq, budget)?;
        Ok(Some(ConversationSummary {
            conversation,
            member,
            last_message: last_message.map(Arc::new),
            unread_count,
        }))
    }

    /// Messages from others in `(read_seq, last_seq]`, newest first, up to the cap; decodes only
    /// each message's sender, and reads what `budget` allows.
    fn unread_count(
        &self,
        conv: ConversationId,
        user: UserId,
        read_seq: Seq,
        last_seq: Seq,
        budget: &mut usize,
    ) -> Result<u64, StoreError> {
        if last_seq <= read_seq {
            return Ok(0);
        }
        let lo = Bound::Excluded(message_key(conv, read_seq));
        let hi = Bound::Included(message_key(conv, last_seq));
        let mut failed = None;
        // `count_unread` stops taking these after UNREAD_SCAN_BYTES_MAX, and the iterator is
        // lazy, so no message past the bound is read.
        let senders = self
            .snap
            .range(self.ks.get(Ks::Messages), (lo, hi))
            .rev()
            .map_while(|guard| match guard.value() {
                Ok(v) => match decode_message_sender(&v) {
                    Ok(sender) => Some((sender, v.len())),
                    Err(e) => {
                        failed = Some(e);
                        None
                    }
                },
                Err(e) => {
                    failed = Some(e.into());
                    None
                }
            });
        let count = count_unread(user, senders, budget);
        match failed {
            Some(e) => Err(e),
            None => Ok(count),
        }
    }
}

/// The last message of a conversation's message-prefix iterator. Shared with the writer,
/// which loads its tip cache the same way from the live keyspace.
pub(crate) fn last_message_of(
    mut iter: impl DoubleEndedIterator<Item = fjall::Guard>,
) -> Result<Option<Message>, StoreError> {
    match iter.next_back() {
        Some(guard) => {
            let (k, v) = guard.into_inner()?;
            Ok(Some(decode_message(&k, &v)?))
        }
        None => Ok(None),
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
