//! Keyspace names and key encoding.
//!
//! Every integer inside a key is big-endian so that byte order equals numeric order: a prefix
//! scan over `conv_id` yields messages by ascending seq, and a reverse scan yields the newest
//! first. Composite keys are fixed-width except the dedup key, whose variable part comes last.

use std::sync::Arc;

use fjall::compaction::{CompactionStrategy, Leveled, SizeTiered};
use fjall::config::{FilterPolicy, FilterPolicyEntry};
use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use magpie_core::{ClientMsgId, ConversationId, Cursor, DeviceId, RequestId, Seq, UserId};

use super::TimelineCompaction;
use crate::StoreError;

/// Width of a single id or counter inside a key or value, in bytes.
pub(crate) const ID_BYTES: usize = 8;
/// Width of a two-part key (`id ‖ id`), in bytes.
pub(crate) const PAIR_BYTES: usize = 2 * ID_BYTES;

/// The keyspaces (column families). The discriminant indexes [`Keyspaces::handles`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Ks {
    /// Schema version and id counters.
    Meta,
    /// `user_id` → user record.
    Users,
    /// `username` → `user_id`.
    Usernames,
    /// `device_id` → device record.
    Devices,
    /// `token_hash` (32 bytes) → ids of the unrevoked devices holding it, ascending (one,
    /// unless hashes of random tokens collide; kept a list so the oldest holder wins, as in
    /// MemoryStore, while the lookup stays a point read).
    Tokens,
    /// `conv_id` → conversation record (the two members of a direct conversation included;
    /// group members live in `Members`).
    Convs,
    /// `min_user ‖ max_user` → `conv_id`.
    Directs,
    /// `conv_id ‖ seq` → message record.
    Messages,
    /// `sender_id ‖ client_msg_id` → `conv_id ‖ seq`.
    Dedup,
    /// `user_id ‖ cursor` → event record (a reference into `messages`, or the event inline).
    Inbox,
    /// `conv_id ‖ user_id` → member record (role, joined_seq, read_seq, muted).
    Members,
    /// `user_id ‖ conv_id` → nothing: the conversations a user belongs to.
    UserConvs,
    /// `user_id ‖ friend_id` → `conv_id ‖ since_ms` (one row per direction).
    Friends,
    /// `request_id` → pending friend request record.
    FriendRequests,
    /// `to ‖ request_id` → nothing: pending requests addressed to a user.
    RequestsIn,
    /// `from ‖ request_id` → nothing: pending requests made by a user.
    RequestsOut,
    /// `from ‖ to` → `request_id` of the pending request of that direction.
    RequestsPair,
    /// `user_id` → when the user was last connected (unix ms, big-endian u64).
    LastSeen,
}

impl Ks {
    /// Every keyspace, in discriminant order.
    pub(crate) const ALL: [Ks; 18] = [
        Ks::Meta,
        Ks::Users,
        Ks::Usernames,
        Ks::Devices,
        Ks::Tokens,
        Ks::Convs,
        Ks::Directs,
        Ks::Messages,
        Ks::Dedup,
        Ks::Inbox,
        Ks::Members,
        Ks::UserConvs,
        Ks::Friends,
        Ks::FriendRequests,
        Ks::RequestsIn,
        Ks::RequestsOut,
        Ks::RequestsPair,
        Ks::LastSeen,
    ];

    /// How the engine compacts this keyspace. fjall keeps a keyspace's strategy from its
    /// creation, so this decides for keyspaces created from now on. The two timelines are
    /// append-only and written to many streams at once, which is what size-tiered compaction
    /// is for (see [`TIERED_RUNS_PER_LEVEL`]); everything else, the dedup index included, is
    /// leveled, because it is read by key and fewer runs mean fewer filter checks per read.
    fn compaction_strategy(
        self,
        timelines: TimelineCompaction,
    ) -> Arc<dyn CompactionStrategy + Send + Sync> {
        match self {
            Ks::Messages | Ks::Inbox if timelines == TimelineCompaction::Tiered => Arc::new(
                SizeTiered::default()
                    .with_l0_threshold(L0_TABLES_COMPACT_AT)
                    .with_runs_per_level(TIERED_RUNS_PER_LEVEL)
                    .with_table_target_size(TIERED_TABLE_TARGET_BYTES),
            ),
            _ => Arc::new(
                Leveled::default()
                    .with_l0_threshold(L0_TABLES_COMPACT_AT)
                    .with_table_target_size(TABLE_TARGET_BYTES),
            ),
        }
    }

    /// Which keys get a bloom filter in each table. Inbox rows are only ever read as ranges
    /// (`user ‖ cursor` from a cursor on), which filters cannot answer, so building them was
    /// pure cost on every flush and merge. Like the strategy, fjall keeps it from the
    /// keyspace's creation: an existing inbox keyspace keeps building filters.
    fn filter_policy(self) -> FilterPolicy {
        match self {
            Ks::Inbox => FilterPolicy::all(FilterPolicyEntry::None),
            _ => KeyspaceCreateOptions::default().filter_policy,
        }
    }

    /// The on-disk name; never change one, it would orphan existing data.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Ks::Meta => "meta",
            Ks::Users => "users",
            Ks::Usernames => "usernames",
            Ks::Devices => "devices",
            Ks::Tokens => "tokens",
            Ks::Convs => "convs",
            Ks::Directs => "directs",
            Ks::Messages => "messages",
            Ks::Dedup => "dedup",
            Ks::Inbox => "inbox",
            Ks::Members => "members",
            Ks::UserConvs => "user_convs",
            Ks::Friends => "friends",
            Ks::FriendRequests => "friend_requests",
            Ks::RequestsIn => "requests_in",
            Ks::RequestsOut => "requests_out",
            Ks::RequestsPair => "requests_pair",
            Ks::LastSeen => "last_seen",
        }
    }
}

/// Open handles to every keyspace. Handles are cheap to clone and thread-safe.
pub(crate) struct Keyspaces {
    /// Indexed by `Ks as usize`.
    handles: Vec<Keyspace>,
}

impl Keyspaces {
    /// Opens (creating if needed) every keyspace of `db`; new keyspaces get memtables of at
    /// most `memtable_bytes_max` (existing ones keep the size they were created with).
    pub(crate) fn open(
        db: &Database,
        memtable_bytes_max: u64,
        timelines: TimelineCompaction,
    ) -> Result<Self, StoreError> {
        let handles = Ks::ALL
            .iter()
            .map(|ks| {
                db.keyspace(ks.name(), || {
                    KeyspaceCreateOptions::default()
                        .max_memtable_size(memtable_bytes_max)
                        .compaction_strategy(ks.compaction_strategy(timelines))
                        .filter_policy(ks.filter_policy())
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { handles })
    }

    /// The handle of `ks`.
    pub(crate) fn get(&self, ks: Ks) -> &Keyspace {
        &self.handles[ks as usize]
    }
}

/// Largest memtable of a keyspace, in bytes (fjall's default is 64 MiB). Smaller memtables
/// flush in smaller bursts that disturb the journal's fsyncs less: at 46,826 msg/s paced,
/// send→deliver p99 was 128–179 ms with 16 MiB against 410–420 ms with 64 MiB (two runs each),
/// and the server's RSS ~170 against ~320 MiB. The price is more flush and compaction work
/// (fjall's workers 36% against 23% of a core over the same 10 s). It applies to keyspaces
/// created from now on: fjall keeps each keyspace's options from its creation.
pub(crate) const MEMTABLE_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// Level-0 tables that trigger a compaction into level 1 (fjall's default is 4). Magpie's keys
/// are appended in time order across many conversations and inboxes, so every level-0 table
/// overlaps all of level 1 and each compaction rewrites level 1 whole; waiting for twice as
/// many tables halves those rewrites. At 60,000 msg/s paced, three alternating runs each: server
/// CPU 124–127% against 128–134%, mean send→deliver 7.6–9.3 against 9.3–13.9 ms. Reads check a
/// few more level-0 tables (bloom filters answer point reads). fjall throttles writes from 20
/// level-0 tables on, far above this. Like the memtable size, it applies to keyspaces created
/// from now on.
const L0_TABLES_COMPACT_AT: u8 = 8;

/// Target size of a table written by a compaction of a leveled keyspace, in bytes (fjall's
/// default is 64 MiB). Measured when the timelines were leveled too; they are tiered now.
/// Level 1 holds `L0_TABLES_COMPACT_AT` of them before it spills into level 2, and because
/// every level-0 table overlaps all of level 1 (see above), each level-0 compaction rewrites
/// level 1 whole: with 64 MiB tables that grew to 512 MiB per compaction under sustained load,
/// with 16 MiB it stops at 128 MiB and the rest moves down a table at a time. Send→deliver
/// p99 over 10 pairs for 60 s, alternating runs: at 87,612 msg/s 24.1, 30.7, 36.0 ms against
/// 42.7, 32.8, 52.4 ms with 64 MiB; at 84,000 msg/s 12.9, 13.4 against 20.1, 19.1 ms (8 MiB:
/// 18.6, 16.9 ms). 10 s runs do not reach the difference. More, smaller tables cost a little
/// more metadata and one more level sooner. Applies to keyspaces created from now on, like
/// the two settings above.
const TABLE_TARGET_BYTES: u64 = 16 * 1024 * 1024;

/// Runs a level of a size-tiered keyspace collects before they are merged into one run of the
/// next level. Each merge reads and writes a level once, so every byte of a timeline is
/// rewritten about once per level (leveled compaction rewrote the next level whole for each
/// merge into it, since every new table overlaps all of it: about ten times per level). A
/// range read consults up to `L0_TABLES_COMPACT_AT` + this many runs per deeper level.
/// `magpie bench latency --pairs 10 --rate 60000 --duration-s 900`, same machine and day:
/// leveled timelines fell behind (49,357/s acked, p99 5.2 s, max 16 s, three devices kicked),
/// tiered kept up (59,958–59,968/s in two runs, p99 257–973 ms, max 3.5–3.9 s); stores after
/// 60 s of 100 × 256 pipelined sends 1.8–2.0 GB against 3.6–4.0 GB. `benches/reads.rs`
/// (3 M messages, 2,000 conversations): history pages and inbox catch-ups take 7–15% longer
/// on average.
const TIERED_RUNS_PER_LEVEL: u8 = 4;

/// Target size of a table written by a merge in a size-tiered keyspace. Tiered merges write
/// whole runs and never pick tables out of one, so small tables would only mean more files.
const TIERED_TABLE_TARGET_BYTES: u64 = 64 * 1024 * 1024;

/// Meta key: the layout version of this database, as a big-endian u64.
pub(crate) const META_SCHEMA_VERSION: &[u8] = b"schema_version";
/// Meta key: the next user id to allocate.
pub(crate) const META_NEXT_USER_ID: &[u8] = b"next_user_id";
/// Meta key: the next device id to allocate.
pub(crate) const META_NEXT_DEVICE_ID: &[u8] = b"next_device_id";
/// Meta key: the next conversation id to allocate.
pub(crate) const META_NEXT_CONVERSATION_ID: &[u8] = b"next_conversation_id";

/// Meta key: the next friend request id to allocate.
pub(crate) const META_NEXT_REQUEST_ID: &[u8] = b"next_request_id";

/// Key of `users` and prefix of `inbox`, `user_convs`, `friends`, `requests_in` and
/// `requests_out`.
pub(crate) fn user_key(id: UserId) -> [u8; ID_BYTES] {
    id.to_be_bytes()
}

/// Key of `devices`.
pub(crate) fn device_key(id: DeviceId) -> [u8; ID_BYTES] {
    id.to_be_bytes()
}

/// Key of `convs` and prefix of `messages` and `members`.
pub(crate) fn conv_key(id: ConversationId) -> [u8; ID_BYTES] {
    id.to_be_bytes()
}

/// Key of `directs`: the pair ordered, so both sides find the same conversation.
pub(crate) fn direct_key(a: UserId, b: UserId) -> [u8; PAIR_BYTES] {
    pair(a.min(b).0, a.max(b).0)
}

/// Key of `messages`.
pub(crate) fn message_key(conv: ConversationId, seq: Seq) -> [u8; PAIR_BYTES] {
    pair(conv.0, seq.0)
}

/// Key of `inbox`.
pub(crate) fn inbox_key(user: UserId, cursor: Cursor) -> [u8; PAIR_BYTES] {
    pair(user.0, cursor.0)
}

/// Key of `members`.
pub(crate) fn member_key(conv: ConversationId, user: UserId) -> [u8; PAIR_BYTES] {
    pair(conv.0, user.0)
}

/// Key of `user_convs`.
pub(crate) fn user_conv_key(user: UserId, conv: ConversationId) -> [u8; PAIR_BYTES] {
    pair(user.0, conv.0)
}

/// Key of `friends`: the row of `user`'s side of the friendship with `friend`.
pub(crate) fn friend_key(user: UserId, friend: UserId) -> [u8; PAIR_BYTES] {
    pair(user.0, friend.0)
}

/// Key of `friend_requests`.
pub(crate) fn request_key(id: RequestId) -> [u8; ID_BYTES] {
    id.to_be_bytes()
}

/// Key of `requests_in` (`user` is the addressee) and `requests_out` (`user` is the requester).
pub(crate) fn user_request_key(user: UserId, id: RequestId) -> [u8; PAIR_BYTES] {
    pair(user.0, id.0)
}

/// Key of `requests_pair`: directed, `from` first.
pub(crate) fn request_pair_key(from: UserId, to: UserId) -> [u8; PAIR_BYTES] {
    pair(from.0, to.0)
}

/// Key of `dedup`. The sender is fixed-width, so the client id needs no length prefix.
pub(crate) fn dedup_key(sender: UserId, client_msg_id: &ClientMsgId) -> Vec<u8> {
    let mut key = Vec::with_capacity(ID_BYTES + client_msg_id.as_str().len());
    key.extend_from_slice(&sender.to_be_bytes());
    key.extend_from_slice(client_msg_id.as_str().as_bytes());
    key
}

/// Two big-endian u64s back to back.
pub(crate) fn pair(hi: u64, lo: u64) -> [u8; PAIR_BYTES] {
    let mut key = [0u8; PAIR_BYTES];
    key[..ID_BYTES].copy_from_slice(&hi.to_be_bytes());
    key[ID_BYTES..].copy_from_slice(&lo.to_be_bytes());
    key
}

/// Splits a two-part key (or value) written by [`pair`].
pub(crate) fn parse_pair(bytes: &[u8], what: &str) -> Result<(u64, u64), StoreError> {
    let arr: [u8; PAIR_BYTES] = bytes.try_into().map_err(|_| {
        StoreError::Corrupt(format!(
            "{what}: expected {PAIR_BYTES} bytes, got {}",
            bytes.len()
        ))
    })?;
    let (hi, lo) = arr.split_at(ID_BYTES);
    Ok((be_u64(hi, what)?, be_u64(lo, what)?))
}

/// Reads one big-endian u64 that must fill `bytes` exactly.
pub(crate) fn be_u64(bytes: &[u8], what: &str) -> Result<u64, StoreError> {
    let arr: [u8; ID_BYTES] = bytes.try_into().map_err(|_| {
        StoreError::Corrupt(format!(
            "{what}: expected {ID_BYTES} bytes, got {}",
            bytes.len()
        ))
    })?;
    Ok(u64::from_be_bytes(arr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_sort_numerically_and_round_trip() {
        assert!(
            message_key(ConversationId(1), Seq(255)) < message_key(ConversationId(1), Seq(256))
        );
        assert!(
            message_key(ConversationId(1), Seq(u64::MAX)) < message_key(ConversationId(2), Seq(0))
        );
        assert_eq!(
            parse_pair(&inbox_key(UserId(7), Cursor(9)), "t").ok(),
            Some((7, 9))
        );
        assert!(parse_pair(&[1, 2, 3], "t").is_err());
        assert_eq!(
            direct_key(UserId(5), UserId(2)),
            direct_key(UserId(2), UserId(5))
        );
    }

    #[test]
    fn dedup_keys_of_different_senders_never_collide() {
        let id = ClientMsgId::new("abc").unwrap();
        let (a, b) = (dedup_key(UserId(1), &id), dedup_key(UserId(2), &id));
        assert_ne!(a, b);
        assert_eq!(&a[..ID_BYTES], &1u64.to_be_bytes());
        assert_eq!(&a[ID_BYTES..], b"abc");
    }
}
