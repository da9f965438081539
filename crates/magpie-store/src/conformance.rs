//! The conformance suite: the observable behaviour every [`Store`] backend must have.
//!
//! [`run_all`] runs every check against a fresh store from a factory; a failing check panics
//! with its name in the message. The factory gets the sink to announce to and the
//! [`GroupPolicy`] the check needs (most use the default; the fan-out checks use small
//! thresholds). Backends' tests call it like this:
//!
//! ```no_run
//! use magpie_store::{conformance, MemoryStore};
//!
//! // In a backend's tests, under #[tokio::test(flavor = "multi_thread")]:
//! async fn memory_store_conforms() {
//!     conformance::run_all(MemoryStore::with_policy).await;
//! }
//! ```
//!
//! Must run on a multi-threaded tokio runtime (backends may use `spawn_blocking`).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use magpie_core::{
    ClientMsgId, Conversation, ConversationId, ConversationKind, Cursor, DeviceId, Event,
    EventPayload, Member, Message, RequestId, Role, Seq, SystemEvent, User, UserEvent, UserId,
};
use parking_lot::Mutex;

use crate::{
    AppendError, AppendRequest, Appended, CommitSink, ConversationNotice, FriendError, GroupError,
    GroupPolicy, MessageRange, Store, StoreError,
};

/// A sink that records every event and notice it is told about, for tests.
#[derive(Default)]
pub struct RecordingSink {
    /// Every event so far, in the order the store announced them.
    events: Mutex<Vec<UserEvent>>,
    /// Every notice so far, in the order the store announced them.
    notices: Mutex<Vec<ConversationNotice>>,
    /// Calls of `members_removed`.
    removals: std::sync::atomic::AtomicU64,
}

impl RecordingSink {
    /// An empty recorder, ready to hand to a store.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A copy of every event recorded so far.
    pub fn events(&self) -> Vec<UserEvent> {
        self.events.lock().clone()
    }

    /// Every event recorded so far; the event record is left empty.
    pub fn take(&self) -> Vec<UserEvent> {
        std::mem::take(&mut *self.events.lock())
    }

    /// How often the store said a commit removed members.
    pub fn removals(&self) -> u64 {
        self.removals.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A copy of every notice recorded so far.
    pub fn notices(&self) -> Vec<ConversationNotice> {
        self.notices.lock().clone()
    }

    /// Every notice recorded so far; the notice record is left empty.
    pub fn take_notices(&self) -> Vec<ConversationNotice> {
        std::mem::take(&mut *self.notices.lock())
    }
}

impl CommitSink for RecordingSink {
    fn committed(&self, events: &[UserEvent], notices: &[ConversationNotice]) {
        self.events.lock().extend_from_slice(events);
        self.notices.lock().extend_from_slice(notices);
    }

    fn members_removed(&self) {
        self.removals
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The names of the checks, in the order [`run_all`] runs them.
pub const CHECKS: &[&str] = &[
    "accounts",
    "concurrent_usernames",
    "devices",
    "direct_conversations",
    "append_seqs_gap_free",
    "concurrent_appends_gap_free",
    "appends_ordered_by_first_poll",
    "concurrent_duplicates_exactly_once",
    "inbox_cursors_gap_free",
    "dedup",
    "resend_after_losing_access",
    "per_item_errors",
    "message_ranges",
    "events_paging",
    "sink_gets_exactly_new_events",
    "long_text",
    "pages_stop_at_the_text_bound",
    "friends_lifecycle",
    "friend_request_reuses_direct",
    "group_lifecycle",
    "owner_handover",
    "group_permissions",
    "group_full",
    "write_and_read_fanout",
    "direct_always_writes_fanout",
    "unread_and_mark_read",
    "receipt_events_only_in_small_groups",
    "mute",
    "members_paging",
    "last_seen",
];

/// The policy of the fan-out checks: groups of up to 3 use write fan-out, at most 6 members.
pub const SMALL_POLICY: GroupPolicy = GroupPolicy {
    members_max: 6,
    fanout_write_max: 3,
    receipt_events_max: 3,
};

/// The policy of the receipt check: groups of up to 2 push receipts, up to 4 write fan-out.
pub const RECEIPT_POLICY: GroupPolicy = GroupPolicy {
    members_max: 6,
    fanout_write_max: 4,
    receipt_events_max: 2,
};

/// The policy a check runs with.
fn policy_of(check: &str) -> GroupPolicy {
    match check {
        "group_full" | "write_and_read_fanout" => SMALL_POLICY,
        "direct_always_writes_fanout" => GroupPolicy {
            members_max: 6,
            fanout_write_max: 1,
            receipt_events_max: 1,
        },
        "receipt_events_only_in_small_groups" => RECEIPT_POLICY,
        _ => GroupPolicy::default(),
    }
}

/// Runs every check, each against a fresh store made by `make` with a fresh [`RecordingSink`]
/// and the policy the check asks for. Panics on the first failure, naming the check.
pub async fn run_all<S, F>(make: F)
where
    S: Store,
    F: Fn(Arc<dyn CommitSink>, GroupPolicy) -> S,
{
    for name in CHECKS {
        run_one(name, &make).await;
    }
}

/// Runs the check called `name` (one of [`CHECKS`]) against a fresh store.
pub async fn run_one<S, F>(name: &str, make: F)
where
    S: Store,
    F: Fn(Arc<dyn CommitSink>, GroupPolicy) -> S,
{
    let sink = RecordingSink::new();
    let store = Arc::new(make(sink.clone(), policy_of(name)));
    eprintln!("conformance: {name}");
    let t = Ctx { store, sink };
    match name {
        "accounts" => announce(name, accounts(t)).await,
        "concurrent_usernames" => announce(name, concurrent_usernames(t)).await,
        "devices" => announce(name, devices(t)).await,
        "direct_conversations" => announce(name, direct_conversations(t)).await,
        "append_seqs_gap_free" => announce(name, append_seqs_gap_free(t)).await,
        "concurrent_appends_gap_free" => announce(name, concurrent_appends_gap_free(t)).await,
        "appends_ordered_by_first_poll" => announce(name, appends_ordered_by_first_poll(t)).await,
        "concurrent_duplicates_exactly_once" => {
            announce(name, concurrent_duplicates_exactly_once(t)).await
        }
        "inbox_cursors_gap_free" => announce(name, inbox_cursors_gap_free(t)).await,
        "dedup" => announce(name, dedup(t)).await,
        "resend_after_losing_access" => announce(name, resend_after_losing_access(t)).await,
        "per_item_errors" => announce(name, per_item_errors(t)).await,
        "message_ranges" => announce(name, message_ranges(t)).await,
        "events_paging" => announce(name, events_paging(t)).await,
        "sink_gets_exactly_new_events" => announce(name, sink_gets_exactly_new_events(t)).await,
        "long_text" => announce(name, long_text(t)).await,
        "pages_stop_at_the_text_bound" => announce(name, pages_stop_at_the_text_bound(t)).await,
        "friends_lifecycle" => announce(name, friends_lifecycle(t)).await,
        "friend_request_reuses_direct" => announce(name, friend_request_reuses_direct(t)).await,
        "group_lifecycle" => announce(name, group_lifecycle(t)).await,
        "owner_handover" => announce(name, owner_handover(t)).await,
        "group_permissions" => announce(name, group_permissions(t)).await,
        "group_full" => announce(name, group_full(t)).await,
        "write_and_read_fanout" => announce(name, write_and_read_fanout(t)).await,
        "direct_always_writes_fanout" => announce(name, direct_always_writes_fanout(t)).await,
        "unread_and_mark_read" => announce(name, unread_and_mark_read(t)).await,
        "receipt_events_only_in_small_groups" => {
            announce(name, receipt_events_only_in_small_groups(t)).await
        }
        "mute" => announce(name, mute(t)).await,
        "members_paging" => announce(name, members_paging(t)).await,
        "last_seen" => announce(name, last_seen(t)).await,
        other => panic!("unknown conformance check {other:?}"),
    }
}

/// Runs a check in its own task so a panic can be reported with the check's name.
async fn announce(name: &str, check: impl Future<Output = ()> + Send + 'static) {
    if let Err(e) = tokio::spawn(check).await {
        let why = e
            .try_into_panic()
            .ok()
            .and_then(|p| {
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            })
            .unwrap_or_else(|| "cancelled".into());
        panic!("conformance check `{name}` failed: {why}");
    }
}

/// What a check gets: the store and the sink it announces to.
struct Ctx<S> {
    store: Arc<S>,
    sink: Arc<RecordingSink>,
}

fn cmid(raw: &str) -> ClientMsgId {
    ClientMsgId::new(raw).expect("test client ids are valid")
}

fn req(conv: ConversationId, sender: UserId, id: &str, text: &str) -> AppendRequest {
    AppendRequest {
        conversation_id: conv,
        sender_id: sender,
        client_msg_id: cmid(id),
        text: text.into(),
    }
}

fn hash(n: u8) -> [u8; 32] {
    [n; 32]
}

async fn users<S: Store>(store: &S, names: &[&str]) -> Vec<User> {
    let mut out = Vec::new();
    for name in names {
        out.push(
            store
                .create_user((*name).into(), format!("hash-of-{name}"))
                .await
                .expect("create_user"),
        );
    }
    out
}

/// `n` users named `u1`, `u2`, …; returns their ids (1, 2, … in a fresh store).
async fn numbered_users<S: Store>(store: &S, n: usize) -> Vec<UserId> {
    let names: Vec<String> = (1..=n).map(|i| format!("u{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    users(store, &names).await.iter().map(|u| u.id).collect()
}

async fn append_ok<S: Store>(store: &S, batch: Vec<AppendRequest>) -> Vec<Appended> {
    store
        .append(batch)
        .await
        .expect("append")
        .into_iter()
        .map(|r| r.expect("every message of this batch is valid"))
        .collect()
}

async fn send<S: Store>(store: &S, conv: ConversationId, sender: UserId, id: &str) -> Appended {
    append_ok(store, vec![req(conv, sender, id, &format!("text {id}"))])
        .await
        .remove(0)
}

/// The value of an operation that must succeed.
#[track_caller]
fn ok<T, E: Debug>(r: Result<Result<T, E>, StoreError>) -> T {
    match r {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => panic!("refused: {e:?}"),
        Err(e) => panic!("store error: {e}"),
    }
}

/// The refusal of an operation that must be refused.
#[track_caller]
fn refused<T: Debug, E>(r: Result<Result<T, E>, StoreError>) -> E {
    match r {
        Ok(Err(e)) => e,
        Ok(Ok(v)) => panic!("expected a refusal, got {v:?}"),
        Err(e) => panic!("store error: {e}"),
    }
}

fn seqs(ms: &[Message]) -> Vec<u64> {
    ms.iter().map(|m| m.seq.0).collect()
}

fn cursors(es: &[Event]) -> Vec<u64> {
    es.iter().map(|e| e.cursor.0).collect()
}

#[track_caller]
fn event_message(e: &Event) -> &Message {
    match &e.payload {
        EventPayload::Message(m) => m,
        other => panic!("expected a message event, got {other:?}"),
    }
}

/// A compact rendering of an event payload, for comparing whole inboxes.
fn shape(p: &EventPayload) -> String {
    match p {
        EventPayload::Message(m) => format!("msg {}/{}", m.conversation_id, m.seq),
        EventPayload::FriendRequest(r) => format!("request {} {}->{}", r.id, r.from, r.to),
        EventPayload::FriendAdded {
            user_id,
            conversation_id,
        } => format!("friend {user_id} in {conversation_id}"),
        EventPayload::GroupJoined { conversation_id } => format!("joined {conversation_id}"),
        EventPayload::GroupLeft { conversation_id } => format!("left {conversation_id}"),
        EventPayload::Read {
            conversation_id,
            read_seq,
        } => format!("read {conversation_id} {read_seq}"),
        EventPayload::Receipt {
            conversation_id,
            user_id,
            read_seq,
        } => format!("receipt {conversation_id} {user_id} {read_seq}"),
    }
}

/// The shapes of `user`'s events after `after`, checking the cursors are gap-free.
async fn inbox_after<S: Store>(store: &S, user: UserId, after: u64) -> Vec<String> {
    let events = store
        .events(user, Cursor(after), 10_000)
        .await
        .expect("events");
    assert_eq!(
        cursors(&events),
        (after + 1..=after + events.len() as u64).collect::<Vec<_>>(),
        "inbox {user} is gap-free"
    );
    events.iter().map(|e| shape(&e.payload)).collect()
}

/// The shapes of all of `user`'s events.
async fn inbox<S: Store>(store: &S, user: UserId) -> Vec<String> {
    inbox_after(store, user, 0).await
}

/// What the sink got since the last call, as (user, shape), and checks it matches the stored
/// events at those cursors.
async fn announced<S: Store>(t: &Ctx<S>) -> Vec<(UserId, String)> {
    let events = t.sink.take();
    for e in &events {
        let stored = t
            .store
            .events(e.user_id, Cursor(e.event.cursor.0 - 1), 1)
            .await
            .expect("events");
        assert_eq!(
            stored,
            vec![e.event.clone()],
            "announced events are the stored ones"
        );
    }
    events
        .iter()
        .map(|e| (e.user_id, shape(&e.event.payload)))
        .collect()
}

fn each(users: &[UserId], what: &str) -> Vec<(UserId, String)> {
    users.iter().map(|&u| (u, what.to_string())).collect()
}

/// The system event of a message (panics for a user message).
#[track_caller]
fn system(m: &Message) -> &SystemEvent {
    m.system.as_ref().expect("a system message")
}

async fn heads<S: Store>(store: &S, users: &[UserId]) -> Vec<Cursor> {
    let mut out = Vec::new();
    for &u in users {
        out.push(store.inbox_head(u).await.expect("head"));
    }
    out
}

async fn member_ids<S: Store>(store: &S, conv: ConversationId) -> Vec<UserId> {
    store
        .members(conv, None, 100_000)
        .await
        .expect("members")
        .iter()
        .map(|m| m.user_id)
        .collect()
}

async fn role_of<S: Store>(store: &S, conv: ConversationId, user: UserId) -> Option<Role> {
    store
        .member(conv, user)
        .await
        .expect("member")
        .map(|m| m.role)
}

/// Users 1, 2, 3 ("ann", "bob", "cat") and the direct conversations ann–bob and ann–cat.
async fn two_conversations<S: Store>(store: &S) -> (Vec<User>, Conversation, Conversation) {
    let us = users(store, &["ann", "bob", "cat"]).await;
    let ab = store
        .direct_conversation(us[0].id, us[1].id)
        .await
        .expect("direct ann-bob");
    let ac = store
        .direct_conversation(us[0].id, us[2].id)
        .await
        .expect("direct ann-cat");
    (us, ab, ac)
}

async fn accounts<S: Store>(t: Ctx<S>) {
    let s = &*t.store;
    let ann = s.create_user("ann".into(), "h1".into()).await.expect("ann");
    let bob = s.create_user("bob".into(), "h2".into()).await.expect("bob");
    assert_eq!(
        (ann.id, bob.id),
        (UserId(1), UserId(2)),
        "user ids are allocated 1, 2, …"
    );
    assert_eq!(
        (ann.username.as_str(), ann.password_hash.as_str()),
        ("ann", "h1")
    );
    assert!(matches!(
        s.create_user("ann".into(), "x".into()).await,
        Err(StoreError::UsernameTaken)
    ));
    let cat = s.create_user("cat".into(), "h3".into()).await.expect("cat");
    assert_eq!(cat.id, UserId(3), "a refused username must not burn an id");

    assert_eq!(
        s.user_by_id(UserId(1)).await.expect("read"),
        Some(ann.clone())
    );
    assert_eq!(s.user_by_name("bob").await.expect("read"), Some(bob));
    assert_eq!(
        s.user_by_name("ann")
            .await
            .expect("read")
            .map(|u| u.password_hash),
        Some("h1".into())
    );
    assert_eq!(s.user_by_name("nobody").await.expect("read"), None);
    assert_eq!(s.user_by_id(UserId(0)).await.expect("read"), None);
    assert_eq!(s.user_by_id(UserId(99)).await.expect("read"), None);
}

async fn concurrent_usernames<S: Store>(t: Ctx<S>) {
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = t.store.clone();
            tokio::spawn(async move { store.create_user("same".into(), format!("h{i}")).await })
        })
        .collect();
    let (mut ok, mut taken) = (Vec::new(), 0);
    for task in tasks {
        match task.await.expect("task") {
            Ok(u) => ok.push(u),
            Err(StoreError::UsernameTaken) => taken += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(
        (ok.len(), taken),
        (1, 15),
        "exactly one concurrent create of a name wins"
    );
    assert_eq!(ok[0].id, UserId(1));
    let next = t
        .store
        .create_user("other".into(), "h".into())
        .await
        .expect("other");
    assert_eq!(next.id, UserId(2), "refused creates burn no ids");
}

async fn devices<S: Store>(t: Ctx<S>) {
    let s = &*t.store;
    let us = users(s, &["ann", "bob"]).await;
    let d1 = s
        .create_device(us[0].id, "laptop".into(), hash(1))
        .await
        .expect("device");
    assert_eq!(d1.id, DeviceId(1));
    assert_eq!(
        (
            d1.user_id,
            d1.name.as_str(),
            d1.token_hash,
            d1.cursor,
            d1.revoked
        ),
        (us[0].id, "laptop", hash(1), Cursor(0), false)
    );
    let d2 = s
        .create_device(us[1].id, "phone".into(), hash(2))
        .await
        .expect("device");
    assert_eq!(d2.id, DeviceId(2));
    assert!(matches!(
        s.create_device(UserId(99), "x".into(), hash(3)).await,
        Err(StoreError::NotFound(_))
    ));
    let d3 = s
        .create_device(us[0].id, "cli".into(), hash(3))
        .await
        .expect("device");
    assert_eq!(d3.id, DeviceId(3), "a refused device must not burn an id");

    assert_eq!(
        s.device_by_token(hash(1)).await.expect("read"),
        Some(d1.clone())
    );
    assert_eq!(
        s.device_by_token(hash(2)).await.expect("read"),
        Some(d2.clone())
    );
    assert_eq!(s.device_by_token(hash(9)).await.expect("read"), None);
    assert_eq!(s.device(DeviceId(2)).await.expect("read"), Some(d2));
    assert_eq!(s.device(DeviceId(99)).await.expect("read"), None);

    s.ack_cursor(d1.id, Cursor(5)).await.expect("ack");
    s.ack_cursor(d1.id, Cursor(3)).await.expect("ack");
    assert_eq!(
        s.device(d1.id).await.expect("read").map(|d| d.cursor),
        Some(Cursor(5)),
        "ack never moves back"
    );
    s.ack_cursor(d1.id, Cursor(7)).await.expect("ack");
    assert_eq!(
        s.device(d1.id).await.expect("read").map(|d| d.cursor),
        Some(Cursor(7))
    );
    assert!(matches!(
        s.ack_cursor(DeviceId(99), Cursor(1)).await,
        Err(StoreError::NotFound(_))
    ));

    s.revoke_device(d1.id).await.expect("revoke");
    assert_eq!(
        s.device_by_token(hash(1)).await.expect("read"),
        None,
        "revoked tokens stop authenticating"
    );
    let revoked = s
        .device(d1.id)
        .await
        .expect("read")
        .expect("still readable");
    assert!(revoked.revoked);
    assert_eq!(revoked.cursor, Cursor(7));
    s.revoke_device(d1.id)
        .await
        .expect("revoking twice is fine");
    assert!(matches!(
        s.revoke_device(DeviceId(99)).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        s.device_by_token(hash(3))
            .await
            .expect("read")
            .map(|d| d.id),
        Some(d3.id),
        "other devices unaffected"
    );
}

async fn direct_conversations<S: Store>(t: Ctx<S>) {
    let s = &*t.store;
    let us = users(s, &["ann", "bob", "cat"]).await;
    let ab = s
        .direct_conversation(us[0].id, us[1].id)
        .await
        .expect("direct");
    assert_eq!(ab.id, ConversationId(1));
    assert_eq!(ab.kind, ConversationKind::Direct);
    assert_eq!(ab.members, vec![us[0].id, us[1].id]);
    assert_eq!((ab.name.as_str(), ab.owner, ab.member_count), ("", None, 2));
    for u in [us[0].id, us[1].id] {
        assert_eq!(
            s.member(ab.id, u).await.expect("member"),
            Some(Member {
                conversation_id: ab.id,
                user_id: u,
                role: Role::Member,
                joined_seq: Seq(1),
                read_seq: Seq(0),
                muted: false,
            }),
            "direct conversations have member rows"
        );
    }
    assert_eq!(s.member(ab.id, us[2].id).await.expect("member"), None);
    assert_eq!(member_ids(s, ab.id).await, vec![us[0].id, us[1].id]);
    assert_eq!(s.last_seq(ab.id).await.expect("last_seq"), Seq(0));
    assert!(
        s.direct_conversation(us[0].id, us[0].id).await.is_err(),
        "no direct conversation with oneself"
    );
    let ba = s
        .direct_conversation(us[1].id, us[0].id)
        .await
        .expect("direct");
    assert_eq!(ba, ab, "the same conversation from both sides");
    let cb = s
        .direct_conversation(us[2].id, us[1].id)
        .await
        .expect("direct");
    assert_eq!(cb.id, ConversationId(2), "a distinct conversation per pair");
    assert_eq!(
        cb.members,
        vec![us[1].id, us[2].id],
        "members sorted ascending"
    );
    assert!(matches!(
        s.direct_conversation(us[0].id, UserId(99)).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        s.direct_conversation(UserId(99), us[0].id).await,
        Err(StoreError::NotFound(_))
    ));
    let ac = s
        .direct_conversation(us[0].id, us[2].id)
        .await
        .expect("direct");
    assert_eq!(
        ac.id,
        ConversationId(3),
        "a refused direct must not burn an id"
    );

    assert_eq!(s.conversation(ab.id).await.expect("read"), Some(ab.clone()));
    assert_eq!(s.conversation(cb.id).await.expect("read"), Some(cb));
    let listed: Vec<ConversationId> = s
        .conversations_of(us[0].id)
        .await
        .expect("conversations_of")
        .iter()
        .map(|c| c.conversation.id)
        .collect();
    let mut sorted = listed.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        vec![ab.id, ac.id],
        "ann's conversations: ann-bob and ann-cat"
    );
    assert!(
        t.sink.events().is_empty(),
        "direct conversations announce nothing"
    );
    assert_eq!(
        s.conversation(ConversationId(99)).await.expect("read"),
        None
    );
    assert_eq!(s.conversation(ConversationId(0)).await.expect("read"), None);
}

async fn append_seqs_gap_free<S: Store>(t: Ctx<S>) {
    let s = &*t.store;
    let (us, ab, ac) = two_conversations(s).await;
    let (ann, bob) = (us[0].id, us[1].id);
    let first = append_ok(
        s,
        vec![
            req(ab.id, ann, "a1", "1"),
            req(ab.id, bob, "b1", "2"),
            req(ab.id, ann, "a2", "3"),
        ],
    )
    .await;
    assert_eq!(
        first.iter().map(|a| a.message.seq.0).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "within one batch"
    );
    assert!(first.iter().all(|a| !a.duplicate));
    let second = append_ok(
        s,
        vec![
            req(ab.id, bob, "b2", "4"),
            req(ac.id, ann, "a3", "x"),
            req(ab.id, ann, "a4", "5"),
        ],
    )
    .await;
    assert_eq!(
        second.iter().map(|a| a.message.seq.0).collect::<Vec<_>>(),
        vec![4, 1, 5],
        "across batches, per conversation"
    );
    let m = &second[2].message;
    assert_eq!(
        (
            m.conversation_id,
            m.sender_id,
            m.client_msg_id.as_str(),
            m.text.as_str()
        ),
        (ab.id, ann, "a4", "5")
    );

    let all = s
        .messages(ab.id, MessageRange::After(Seq(0)), 100)
        .await
        .expect("read");
    assert_eq!(seqs(&all), vec![1, 2, 3, 4, 5]);
    assert_eq!(
        all.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
        vec!["1", "2", "3", "4", "5"]
    );
    assert_eq!(all[4], **m, "reads return what append returned");
    assert!(
        all.windows(2).all(|w| w[0].ts_ms <= w[1].ts_ms),
        "ts_ms never decreases within a conversation"
    );
    assert_eq!(
        seqs(
            &s.messages(ac.id, MessageRange::Latest, 100)
                .await
                .expect("read")
        ),
        vec![1]
    );
    assert_eq!(s.append(Vec::new()).await.expect("empty batch").len(), 0);
}

async fn concurrent_appends_gap_free<S: Store>(t: Ctx<S>) {
    const TASKS: usize = 8;
    const PER_TASK: usize = 10;
    let (us, ab, _) = two_conversations(&*t.store).await;
    let tasks: Vec<_> = (0..TASKS)
        .map(|i| {
            let store = t.store.clone();
            let sender = us[i % 2].id;
            tokio::spawn(async move {
                let mut got = Vec::new();
                for j in 0..PER_TASK {
                    got.push(
                        send(&*store, ab.id, sender, &format!("t{i}-{j}"))
                            .await
                            .message
                            .seq
                            .0,
                    );
                }
                got
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        let got = task.await.expect("task");
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "one caller's appends are ordered"
        );
        all.extend(got);
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=(TASKS * PER_TASK) as u64).collect::<Vec<_>>(),
        "concurrent seqs are gap-free and unique"
    );
    let head = t.store.inbox_head(us[0].id).await.expect("read");
    assert_eq!(head, Cursor((TASKS * PER_TASK) as u64));
    let events = t
        .store
        .events(us[1].id, Cursor(0), 200)
        .await
        .expect("read");
    assert_eq!(
        cursors(&events),
        (1..=(TASKS * PER_TASK) as u64).collect::<Vec<_>>()
    );
}

/// `Store::append`'s ordering promise: batches whose futures are polled once each, oldest
/// first, get their seqs in that order however they are awaited afterwards (the WebSocket
/// gateway keeps two batches of a connection in flight this way).
async fn appends_ordered_by_first_poll<S: Store>(t: Ctx<S>) {
    const BATCHES: usize = 16;
    const PER_BATCH: usize = 3;
    let (us, ab, _) = two_conversations(&*t.store).await;
    let mut flights = Vec::new();
    for b in 0..BATCHES {
        let batch = (0..PER_BATCH)
            .map(|i| req(ab.id, us[b % 2].id, &format!("b{b}-{i}"), "ordered"))
            .collect();
        let mut flight = t.store.append(batch);
        // Polled once each, oldest first: with a fresh budget and room in the queue, every
        // batch takes its place in line right here.
        let first = flight
            .as_mut()
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
        flights.push((flight, first));
    }
    // Await the newest first: the order of completion must not matter.
    let mut seqs = vec![Vec::new(); BATCHES];
    for (b, (flight, first)) in flights.into_iter().enumerate().rev() {
        let result = match first {
            std::task::Poll::Ready(r) => r,
            std::task::Poll::Pending => flight.await,
        };
        seqs[b] = result
            .expect("append")
            .into_iter()
            .map(|r| r.expect("valid").message.seq.0)
            .collect();
    }
    let flat: Vec<u64> = seqs.into_iter().flatten().collect();
    assert_eq!(
        flat,
        (1..=(BATCHES * PER_BATCH) as u64).collect::<Vec<_>>(),
        "seqs follow the order of the first polls"
    );
}

/// Many callers send the same idempotency keys at once, into two conversations: each key gets
/// exactly one seq, every answer for it names that seq, seqs and cursors stay gap-free, and the
/// sink hears each message once per member, in cursor order. (In the embedded store this makes
/// the writer stage against batches that are sealed but not yet applied.)
async fn concurrent_duplicates_exactly_once<S: Store>(t: Ctx<S>) {
    const TASKS: usize = 12;
    const KEYS: usize = 20;
    let (us, ab, ac) = two_conversations(&*t.store).await;
    let ann = us[0].id;
    let tasks: Vec<_> = (0..TASKS)
        .map(|i| {
            let store = t.store.clone();
            let conv = if i % 2 == 0 { ab.id } else { ac.id };
            tokio::spawn(async move {
                let mut got = Vec::new();
                for k in 0..KEYS {
                    // Every task sends every key of its conversation, each from another start.
                    let k = (k + i) % KEYS;
                    let a = send(&*store, conv, ann, &format!("c{}-k{k}", conv.0)).await;
                    got.push(((conv, k), a.message.seq.0, a.duplicate));
                }
                got
            })
        })
        .collect();
    let mut answers: BTreeMap<(ConversationId, usize), Vec<(u64, bool)>> = BTreeMap::new();
    for task in tasks {
        for (key, seq, duplicate) in task.await.expect("task") {
            answers.entry(key).or_default().push((seq, duplicate));
        }
    }
    assert_eq!(answers.len(), 2 * KEYS);
    for conv in [ab.id, ac.id] {
        let mut seqs = Vec::new();
        for k in 0..KEYS {
            let got = &answers[&(conv, k)];
            assert_eq!(got.len(), TASKS / 2);
            assert_eq!(
                got.iter().filter(|(_, dup)| !dup).count(),
                1,
                "key {k} of {conv} was stored exactly once: {got:?}"
            );
            assert!(
                got.iter().all(|(seq, _)| *seq == got[0].0),
                "every answer for key {k} of {conv} names one seq: {got:?}"
            );
            seqs.push(got[0].0);
        }
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (1..=KEYS as u64).collect::<Vec<_>>(),
            "seqs of {conv}"
        );
    }
    for (user, expected) in [(ann, 2 * KEYS), (us[1].id, KEYS), (us[2].id, KEYS)] {
        let head = t.store.inbox_head(user).await.expect("read");
        assert_eq!(head, Cursor(expected as u64), "inbox head of {user}");
        let heard: Vec<u64> = t
            .sink
            .events()
            .iter()
            .filter(|e| e.user_id == user)
            .map(|e| e.event.cursor.0)
            .collect();
        assert_eq!(
            heard,
            (1..=expected as u64).collect::<Vec<_>>(),
            "the sink heard {user}'s events once each, in order"
        );
    }
}

async fn inbox_cursors_gap_free<S: Store>(t: Ctx<S>) {
    let s = &*t.store;
    let (us, ab, ac) = two_conversations(s).await;
    let (ann, bob, cat) = (us[0].id, us[1].id, us[2].id);
    assert_eq!(s.inbox_head(ann).await.expect("read"), Cursor(0));
    send(s, ab.id, ann, "1").await;
    append_ok(
        s,
        vec![
            req(ab.id, bob, "2", "x"),
            req(ac.id, cat, "3", "y"),
            req(ab.id, ann, "4", "z"),
        ],
    )
    .await;
    send(s, ac.id, ann, "5").await;
    assert_eq!(
        s.inbox_head(ann).await.expect("read"),
        Cursor(5),
        "right after append returns"
    );
    assert_eq!(s.inbox_head(bob).await.expect("read"), Cursor(3));
    assert_eq!(s.inbox_head(cat).await.expect("read"), Cursor(2));
    assert_eq!(s.inbox_head(UserId(99)).await.expect("read"), Cursor(0));

    let ann_events = s.events(ann, Cursor(0), 100).await.expect("read");
    assert_eq!(cursors(&ann_events), vec![1, 2, 3, 4, 5]);
    let expect: Vec<(ConversationId, u64)> =
        vec![(ab.id, 1), (ab.id, 2), (ac.id, 1), (ab.id, 3), (ac.id, 2)];
    let got: Vec<_> = ann_events
        .iter()
        .map(|e| (event_message(e).conversation_id, event_message(e).seq.0))
        .collect();
    assert_eq!(
        got, expect,
        "ann's inbox has every message of her conversations in commit order"
    );
    let bob_events = s.events(bob, Cursor(0), 100).await.expect("read");
    assert_eq!(cursors(&bob_events), vec![1, 2, 3]);
    assert_eq!(
        bob_events
            .iter()
            .map(|e| event_message(e).seq.0)
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(
        event_message(&bob_events[2]),
        event_message(&ann_events[3]),
        "both members see the same message"
    );
}

async fn dedup<S: Store>(t: Ctx<S>) {
    let s = &*t.store;
    let (us, ab, ac) = two_conversations(s).await;
    let (ann, bob) = (us[0].id, us[1].id);
    let original = send(s, ab.id, ann, "x").await;
    t.sink.take();
    let head = s.inbox_head(bob).await.expect("read");

    let again = append_ok(s, vec![req(ab.id, ann, "x", "different text")])
        .await
        .remove(0);
    assert!(again.duplicate);
    assert_eq!(
        again.message, original.message,
        "a duplicate returns the original, text included"
    );
    assert_eq!(
        s.inbox_head(bob).await.expect("read"),
        head,
        "a duplicate creates no event"
    );
    assert!(t.sink.take().is_empty(), "a duplicate announces nothing");
    assert_eq!(
        seqs(
            &s.messages(ab.id, MessageRange::Latest, 10)
                .await
                .expect("read")
        ),
        vec![1]
    );

    // Another sender may use the same client id.
    let bobs = send(s, ab.id, bob, "x").await;
    assert!(!bobs.duplicate);
    assert_eq!(bobs.message.seq, Seq(2));

    // Within one batch: the second is a duplicate of the first, the third is new.
    let batch = append_ok(
        s,
        vec![
            req(ab.id, ann, "y", "first"),
            req(ab.id, ann, "y", "second"),
            req(ab.id, ann, "z", "third"),
        ],
    )
    .await;
    assert_eq!(
        batch
            .iter()
            .map(|a| (a.message.seq.0, a.duplicate))
            .collect::<Vec<_>>(),
        vec![(3, false), (3, true), (4, false)]
    );
    assert_eq!(batch[1].message.text, "first");
    assert_eq!(
        t.sink.take().len(),
        2 * 3,
        "two members × three new messages"
    );

    // The key is (sender, client id) forever, whatever the conversation.
    let elsewhere = append_ok(s, vec![req(ac.id, ann, "x", "in another conversation")])
        .await
        .remove(0);
    assert!(elsewhere.duplicate);
    assert_eq!(elsewhere.message, original.message);
    assert_eq!(
        s.messages(ac.id, MessageRange::Latest, 10)
            .await
            .expect("read"),
        Vec::<Message>::new()
    );
}

/// A resend is answered from the dedup index before any access check: a sender removed since
/// must learn that the message was stored, not that it failed (its client would show a
/// delivered message as failed, and a manual retry would duplicate it).
async fn resend_after_losing_access<S: Store>(t: Ctx<S>) {
    let s = &*t.store;
    let us = users(s, &["ann", "bob", "cat"]).await;
    let (ann, bob, cat) = (us[0].id, us[1].id, us[2].id);
    let g = ok(s.create_group(ann, "team".into(), vec![bob, cat]).await);
    let original = send(s, g.id, bob, "m1").await;
    assert_eq!(
        s.sent_message(bob, &cmid("m1")).await.expect("read"),
        Some((*original.message).clone()),
        "the dedup index finds the stored message"
    );
    assert_eq!(s.sent_message(ann, &cmid("m1")).await.expect("read"), None);
    assert_eq!(s.sent_message(bob, &cmid("m2")).await.expect("read"), None);

    ok(s.remove_member(ann, g.id, bob).await);
    t.sink.take();
    let last = s.last_seq(g.id).await.expect("read");
    let resend = s
        .append(vec![
            req(g.id, bob, "m1", "text m1"),
            req(g.id, bob, "m2", "a new message"),
        ])
        .await
        .expect("append");
    assert_eq!(
        resend[0].as_ref().map(|a| (a.duplicate, a.message.seq)),
        Ok((true, original.message.seq)),
        "a resend of a stored message is a duplicate, even after its sender lost access"
    );
    assert_eq!(
        resend[1].as_ref().map(|_| ()),
        Err(&AppendError::NotMember),
        "a new message is refused"
    );
    assert_eq!(
        s.last_seq(g.id).await.expect("read"),
        last,
        "nothing appended"
    );
    assert!(t.sink.take().is_empty(), "nothing announced");
    assert_eq!(
        s.sent_message(bob, &cmid("m1")).await.expect("read"),
        Some((*original.message).clone()),
        "still found after the removal"
    );
}

async fn per_item_errors<S: Store>(t: Ctx<S>) {
    let s = &*t.store;
    let (us, ab, _) = two_conversations(s).await;
    let (ann, bob, cat) = (us[0].id, us[1].id, us[2].id);
    let results = s
        .append(vec![
            req(ab.id, ann, "1", "ok"),
            req(ConversationId(99), ann, "2", "no such conversation"),
            req(ab.id, cat, "3", "not a member"),
            req(ab.id, bob, "4", "ok"),
        ])
        .await
        .expect("the batch as a whole succeeds");
    assert_eq!(results.len(), 4);
    assert_eq!(results[0].as_ref().map(|a| a.message.seq), Ok(Seq(1)));
    assert_eq!(
        results[1].as_ref().map(|_| ()),
        Err(&AppendError::NoConversation)
    );
    assert_eq!(
        results[2].as_ref().map(|_| ()),
        Err(&AppendError::NotMember)
    );
    assert_eq!(
        results[3].as_ref().map(|a| a.message.seq),
        Ok(Seq(2)),
        "refusals leave no gap"
    );
    assert_eq!(t.sink.take().len(), 4, "refused messages announce nothing");
    assert_eq!(s.inbox_head(cat).await.expect("read"), Cursor(0));

    // A refused message does not reserve its client id.
    let retry = append_ok(s, vec![req(ab.id, ann, "2", "now valid")])
        .await
        .remove(0);
    assert!(!retry.duplicate);
    assert_eq!(retry.message.seq, Seq(3));
}

async fn message_ranges<S: Store>(t: Ctx<S>) {
    let s = &*t.store;
    let (us, ab, ac) = two_conversations(s).await;
    for i in 1..=10 {
        send(s, ab.id, us[i % 2].id, &format!("m{i}")).await;
    }
    send(s, ac.id, us[0].id, "other").await;
    let get =
        |range, limit| async move { seqs(&s.messages(ab.id, range, limit).await.expect("read")) };
    assert_eq!(get(MessageRange::After(Seq(0)), 3).await, vec![1, 2, 3]);
    assert_eq!(get(MessageRange::After(Seq(3)), 3).await, vec![4, 5, 6]);
    assert_eq!(get(MessageRange::After(Seq(8)), 5).await, vec![9, 10]);
    assert_eq!(
        get(MessageRange::After(Seq(10)), 5).await,
        Vec::<u64>::new()
    );
    assert_eq!(
        get(MessageRange::After(Seq(u64::MAX)), 5).await,
        Vec::<u64>::new()
    );
    assert_eq!(get(MessageRange::Before(Seq(5)), 2).await, vec![3, 4]);
    assert_eq!(get(MessageRange::Before(Seq(3)), 10).await, vec![1, 2]);
    assert_eq!(
        get(MessageRange::Before(Seq(1)), 10).await,
        Vec::<u64>::new()
    );
    assert_eq!(
        get(MessageRange::Before(Seq(0)), 10).await,
        Vec::<u64>::new()
    );
    assert_eq!(get(MessageRange::Before(Seq(100)), 3).await, vec![8, 9, 10]);
    assert_eq!(get(MessageRange::Latest, 4).await, vec![7, 8, 9, 10]);
    assert_eq!(
        get(MessageRange::Latest, 100).await,
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(get(MessageRange::Latest, 0).await, Vec::<u64>::new());
    assert_eq!(get(MessageRange::After(Seq(0)), 0).await, Vec::<u64>::new());
    assert_eq!(
        get(MessageRange::Before(Seq(5)), 0).await,
        Vec::<u64>::new()
    );
    let none = s
        .messages(ConversationId(99), MessageRange::Latest, 10)
        .await
        .expect("read");
    assert!(none.is_empty());
    let other = s
        .messages(ac.id, MessageRange::After(Seq(0)), 10)
        .await
        .expect("read");
    assert_eq!(
        other.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
        vec!["text other"],
        "conversations do not bleed"
    );
}

async fn events_paging<S: Store>(t: Ctx<S>) {
    let s = &*t.store;
    let (us, ab, _) = two_conversations(s).await;
    for i in 1..=10 {
        send(s, ab.id, us[0].id, &format!("m{i}")).await;
    }
    let bob = us[1].id;
    let page =
        |after, limit| async move { s.events(bob, Cursor(after), limit).await.expect("read") };
    assert_eq!(cursors(&page(0, 4).await), vec![1, 2, 3, 4]);
    assert_eq!(cursors(&page(4, 4).await), vec![5, 6, 7, 8]);
    assert_eq!(cursors(&page(8, 4).await), vec![9, 10]);
    assert!(page(10, 4).await.is_empty());
    assert!(page(u64::MAX, 4).await.is_empty());
    assert!(page(0, 0).await.is_empty());
    assert!(s
        .events(us[2].id, Cursor(0), 10)
        .await
        .expect("read")
        .is_empty());
    assert!(s
        .events(UserId(99), Cursor(0), 10)
        .await
        .expect("read")
        .is_empty());

    let messages = s
        .messages(ab.id, MessageRange::Latest, 100)
        .await
        .expect("read");
    let events = page(0, 100).await;
    assert_eq!(
        events
            .iter()
            .map(|e| event_message(e).clone())
            .collect::<Vec<_>>(),
        messages,
        "events carry the stored messages"
    );
}

async fn sink_gets_exactly_new_events<S: Store>(t: Ctx<S>) {
    let s = &*t.store;
    let (us, ab, ac) = two_conversations(s).await;
    let (ann, bob, cat) = (us[0].id, us[1].id, us[2].id);
    assert!(
        t.sink.events().is_empty(),
        "accounts and conversations announce nothing"
    );

    send(s, ab.id, ann, "1").await;
    let after_one = t.sink.events();
    assert_eq!(after_one.len(), 2, "announced by the time append returns");
    append_ok(
        s,
        vec![req(ac.id, cat, "2", "x"), req(ab.id, bob, "3", "y")],
    )
    .await;
    send(s, ab.id, ann, "1").await; // duplicate
    s.append(vec![req(ab.id, cat, "4", "not a member")])
        .await
        .expect("append")
        .remove(0)
        .expect_err("refused");
    send(s, ac.id, ann, "5").await;

    let announced = t.sink.take();
    assert_eq!(
        announced.len(),
        2 * 4,
        "two members × four new messages, nothing else"
    );
    assert_eq!(&announced[..2], &after_one[..]);
    for user in [ann, bob, cat] {
        let mine: Vec<Event> = announced
            .iter()
            .filter(|e| e.user_id == user)
            .map(|e| e.event.clone())
            .collect();
        let stored = s.events(user, Cursor(0), 100).await.expect("read");
        assert_eq!(
            mine, stored,
            "user {user}: the sink saw exactly the stored events, in cursor order"
        );
        assert_eq!(cursors(&mine), (1..=mine.len() as u64).collect::<Vec<_>>());
    }
}

async fn long_text<S: Store>(t: Ctx<S>) {
    let s = &*t.store;
    let (us, ab, _) = two_conversations(s).await;
    let text = "é".repeat(magpie_core::limits::MESSAGE_CHARS_MAX);
    let stored = append_ok(s, vec![req(ab.id, us[0].id, "long", &text)])
        .await
        .remove(0);
    assert_eq!(stored.message.text, text);
    let read = s
        .messages(ab.id, MessageRange::Latest, 1)
        .await
        .expect("read");
    assert_eq!(read[0].text, text);
    for user in [us[0].id, us[1].id] {
        let events = s.events(user, Cursor(0), 10).await.expect("read");
        assert_eq!(event_message(&events[0]).text, text);
    }
}

/// A page read stops after the message whose text crosses `PAGE_TEXT_BYTES_MAX`, counted from
/// where the read starts, so a request never holds 200 messages of 400 KB.
async fn pages_stop_at_the_text_bound<S: Store>(t: Ctx<S>) {
    use magpie_core::limits::{MESSAGE_CHARS_MAX, PAGE_TEXT_BYTES_MAX};
    let s = &*t.store;
    let (us, ab, _) = two_conversations(s).await;
    // 400,000 bytes each: the third message of a page crosses 1 MiB.
    let text = "😀".repeat(MESSAGE_CHARS_MAX);
    assert!(3 * text.len() > PAGE_TEXT_BYTES_MAX && 2 * text.len() <= PAGE_TEXT_BYTES_MAX);
    for i in 0..6 {
        append_ok(s, vec![req(ab.id, us[0].id, &format!("big{i}"), &text)]).await;
    }
    let read = |range| async move { seqs(&s.messages(ab.id, range, 200).await.expect("read")) };
    assert_eq!(read(MessageRange::After(Seq(0))).await, vec![1, 2, 3]);
    assert_eq!(read(MessageRange::After(Seq(3))).await, vec![4, 5, 6]);
    assert_eq!(read(MessageRange::Latest).await, vec![4, 5, 6]);
    assert_eq!(read(MessageRange::Before(Seq(5))).await, vec![2, 3, 4]);
    let events = s.events(us[1].id, Cursor(0), 200).await.expect("read");
    let cursors: Vec<u64> = events.iter().map(|e| e.cursor.0).collect();
    assert_eq!(cursors.len(), 3, "{cursors:?}");
    assert_eq!(cursors[0], 1);
    // Small messages fill a page up to its limit.
    for i in 0..5 {
        send(s, ab.id, us[1].id, &format!("small{i}")).await;
    }
    assert_eq!(
        read(MessageRange::After(Seq(6))).await,
        vec![7, 8, 9, 10, 11]
    );
}

async fn friends_lifecycle<S: Store>(t: Ctx<S>) {
    let s = &*t.store;
    let us = users(s, &["ann", "bob", "cat"]).await;
    let (ann, bob, cat) = (us[0].id, us[1].id, us[2].id);

    assert_eq!(
        refused(s.request_friend(ann, ann, "me".into()).await),
        FriendError::SelfRequest
    );
    assert_eq!(
        refused(s.request_friend(ann, UserId(99), "x".into()).await),
        FriendError::UnknownUser
    );
    let r1 = ok(s.request_friend(ann, bob, "hi bob".into()).await);
    assert_eq!(
        (r1.id, r1.from, r1.to, r1.message.as_str()),
        (RequestId(1), ann, bob, "hi bob")
    );
    assert_eq!(
        announced(&t).await,
        vec![(bob, "request 1 1->2".to_string())]
    );
    let events = s.events(bob, Cursor(0), 10).await.expect("events");
    assert_eq!(events[0].payload, EventPayload::FriendRequest(r1.clone()));

    let again = ok(s.request_friend(ann, bob, "hello?".into()).await);
    assert_eq!(again, r1, "a pending request is returned unchanged");
    assert!(announced(&t).await.is_empty(), "and announces nothing");
    assert_eq!(
        s.friend_requests(bob).await.expect("requests"),
        (vec![r1.clone()], vec![])
    );
    assert_eq!(
        s.friend_requests(ann).await.expect("requests"),
        (vec![], vec![r1.clone()])
    );

    // A request in the other direction is a request of its own.
    let r2 = ok(s.request_friend(bob, ann, "hi ann".into()).await);
    assert_eq!((r2.id, r2.from, r2.to), (RequestId(2), bob, ann));
    let r3 = ok(s.request_friend(cat, bob, "".into()).await);
    assert_eq!(r3.id, RequestId(3));
    assert_eq!(
        s.friend_requests(bob).await.expect("requests"),
        (vec![r1.clone(), r3.clone()], vec![r2.clone()]),
        "incoming and outgoing, oldest first"
    );
    announced(&t).await;

    assert_eq!(
        refused(s.answer_friend_request(ann, r1.id, true).await),
        FriendError::NotAddressee
    );
    assert_eq!(
        refused(s.answer_friend_request(cat, r1.id, true).await),
        FriendError::NotAddressee
    );
    assert_eq!(
        refused(s.answer_friend_request(bob, RequestId(99), true).await),
        FriendError::NotFound
    );
    assert!(announced(&t).await.is_empty());

    let conv = ok(s.answer_friend_request(bob, r1.id, true).await).expect("accepted");
    assert_eq!(conv.kind, ConversationKind::Direct);
    assert_eq!(conv.members, vec![ann, bob]);
    let c = conv.id;
    assert_eq!(
        announced(&t).await,
        vec![
            (ann, format!("friend {bob} in {c}")),
            (bob, format!("friend {ann} in {c}")),
        ],
        "FriendAdded in both inboxes"
    );
    assert_eq!(
        inbox(s, ann).await,
        vec!["request 2 2->1".to_string(), format!("friend {bob} in {c}")]
    );
    assert!(s.are_friends(ann, bob).await.expect("read"));
    assert!(s.are_friends(bob, ann).await.expect("read"));
    assert!(!s.are_friends(ann, cat).await.expect("read"));
    let fa = s.friends(ann).await.expect("friends");
    assert_eq!(
        fa.iter()
            .map(|f| (f.user_id, f.conversation_id))
            .collect::<Vec<_>>(),
        vec![(bob, c)]
    );
    let fb = s.friends(bob).await.expect("friends");
    assert_eq!(
        fb.iter()
            .map(|f| (f.user_id, f.conversation_id))
            .collect::<Vec<_>>(),
        vec![(ann, c)]
    );
    assert_eq!(fa[0].since_ms, fb[0].since_ms);
    assert!(s.member(c, ann).await.expect("member").is_some());
    assert_eq!(
        s.friend_requests(ann).await.expect("requests"),
        (vec![], vec![]),
        "the reverse request was settled too"
    );
    assert_eq!(
        s.friend_requests(bob).await.expect("requests"),
        (vec![r3.clone()], vec![])
    );
    for (user, id) in [(bob, r1.id), (ann, r2.id)] {
        assert_eq!(
            refused(s.answer_friend_request(user, id, true).await),
            FriendError::NotFound,
            "answered and settled requests are gone"
        );
    }
    for (a, b) in [(ann, bob), (bob, ann)] {
        assert_eq!(
            refused(s.request_friend(a, b, "again".into()).await),
            FriendError::AlreadyFriends
        );
    }

    // Declining deletes the request and changes nothing else.
    let before = heads(s, &[bob, cat]).await;
    assert_eq!(ok(s.answer_friend_request(bob, r3.id, false).await), None);
    assert_eq!(
        heads(s, &[bob, cat]).await,
        before,
        "a decline announces nothing"
    );
    assert!(announced(&t).await.is_empty());
    assert!(!s.are_friends(bob, cat).await.expect("read"));
    assert_eq!(
        s.friend_requests(cat).await.expect("requests"),
        (vec![], vec![])
    );
    assert_eq!(
        refused(s.answer_friend_request(bob, r3.id, true).await),
        FriendError::NotFound
    );

    // Unfriending keeps the conversation; befriending again reuses it.
    assert!(s.remove_friend(bob, ann).await.expect("remove"));
    assert!(!s.remove_friend(ann, bob).await.expect("remove"));
    assert!(!s.are_friends(ann, bob).await.expect("read"));
    assert!(s.friends(ann).await.expect("friends").is_empty());
    assert!(s.friends(bob).await.expect("friends").is_empty());
    assert!(s.conversation(c).await.expect("read").is_some());
    assert!(s.member(c, bob).await.expect("member").is_some());
    let r4 = ok(s.request_friend(ann, bob, "again".into()).await);
    assert_eq!(r4.id, RequestId(4), "request ids are never reused");
    let again = ok(s.answer_friend_request(bob, r4.id, true).await).expect("accepted");
    assert_eq!(again, conv, "the same direct conversation");
}

async fn friend_request_reuses_direct<S: Store>(t: Ctx<S>) {
    let s = &*t.store;
    let us = users(s, &["ann", "bob", "cat"]).await;
    let (ann, cat) = (us[0].id, us[2].id);
    let ac = s.direct_conversation(ann, cat).await.expect("direct");
    send(s, ac.id, ann, "before").await;
    let r = ok(s.request_friend(cat, ann, "".into()).await);
    let conv = ok(s.answer_friend_request(ann, r.id, true).await).expect("accepted");
    assert_eq!(conv.id, ac.id, "an existing direct conversation is reused");
    assert_eq!(s.last_seq(ac.id).await.expect("last_seq"), Seq(1));
    let f = s.friends(cat).await.expect("friends");
    assert_eq!(f.len(), 1);
    assert_eq!((f[0].user_id, f[0].conversation_id), (ann, ac.id));
}

async fn group_lifecycle<S: Store>(t: Ctx<S>) {
    let s = &*t.store;
    let us = users(s, &["ann", "bob", "cat", "dan", "eve"]).await;
    let (ann, bob, cat, dan) = (us[0].id, us[1].id, us[2].id, us[3].id);

    let g = ok(s
        .create_group(ann, "team".into(), vec![cat, bob, bob])
        .await);
    assert_eq!(g.kind, ConversationKind::Group);
    assert_eq!(
        (g.name.as_str(), g.owner, g.member_count),
        ("team", Some(ann), 3)
    );
    assert!(g.members.is_empty(), "group members live in member rows");
    assert_eq!(s.conversation(g.id).await.expect("read"), Some(g.clone()));
    let c = g.id;

    let first = s
        .messages(c, MessageRange::Latest, 10)
        .await
        .expect("messages");
    assert_eq!(first.len(), 1);
    let m1 = &first[0];
    assert_eq!(
        (
            m1.seq,
            m1.sender_id,
            m1.client_msg_id.as_str(),
            m1.text.as_str()
        ),
        (Seq(1), ann, format!("sys-{c}-1").as_str(), "")
    );
    assert_eq!(
        system(m1),
        &SystemEvent::GroupCreated {
            actor: ann,
            name: "team".into(),
            members: vec![ann, bob, cat],
        }
    );
    let members = s.members(c, None, 10).await.expect("members");
    assert_eq!(
        members
            .iter()
            .map(|m| (m.user_id, m.role, m.joined_seq, m.read_seq, m.muted))
            .collect::<Vec<_>>(),
        vec![
            (ann, Role::Owner, Seq(1), Seq(1), false),
            (bob, Role::Member, Seq(1), Seq(1), false),
            (cat, Role::Member, Seq(1), Seq(1), false),
        ]
    );
    let mut expected = each(&[ann, bob, cat], &format!("msg {c}/1"));
    expected.extend(each(&[ann, bob, cat], &format!("joined {c}")));
    assert_eq!(announced(&t).await, expected);
    assert!(
        t.sink.take_notices().is_empty(),
        "a small group uses write fan-out"
    );
    assert_eq!(
        inbox(s, bob).await,
        vec![format!("msg {c}/1"), format!("joined {c}")],
        "the message, then the join"
    );

    // Adding: existing members are skipped, the new ones join at the system message's seq.
    let added = ok(s.add_members(ann, c, vec![dan, bob, dan]).await).expect("someone new");
    assert_eq!(added.seq, Seq(2));
    assert_eq!(
        system(&added),
        &SystemEvent::MembersAdded {
            actor: ann,
            users: vec![dan],
        }
    );
    assert_eq!(added.client_msg_id.as_str(), format!("sys-{c}-2"));
    let d = s.member(c, dan).await.expect("member").expect("dan joined");
    assert_eq!(
        (d.role, d.joined_seq, d.read_seq),
        (Role::Member, Seq(2), Seq(2))
    );
    let mut expected = each(&[ann, bob, cat, dan], &format!("msg {c}/2"));
    expected.push((dan, format!("joined {c}")));
    assert_eq!(announced(&t).await, expected);
    assert_eq!(
        s.conversation(c)
            .await
            .expect("read")
            .map(|c| c.member_count),
        Some(4)
    );
    let before = heads(s, &[ann, bob, cat, dan]).await;
    assert_eq!(ok(s.add_members(ann, c, vec![bob, cat]).await), None);
    assert_eq!(ok(s.add_members(ann, c, vec![]).await), None);
    assert_eq!(
        heads(s, &[ann, bob, cat, dan]).await,
        before,
        "nothing written"
    );
    assert_eq!(s.last_seq(c).await.expect("last_seq"), Seq(2));

    let m3 = ok(s.set_role(ann, c, bob, Role::Admin).await);
    assert_eq!(
        (m3.seq, system(&m3)),
        (
            Seq(3),
            &SystemEvent::RoleChanged {
                actor: ann,
                user: bob,
                role: Role::Admin,
            }
        )
    );
    assert_eq!(role_of(s, c, bob).await, Some(Role::Admin));

    let m4 = ok(s.rename_group(bob, c, "crew".into()).await);
    assert_eq!(
        (m4.seq, m4.sender_id, system(&m4)),
        (
            Seq(4),
            bob,
            &SystemEvent::Renamed {
                actor: bob,
                name: "crew".into(),
            }
        )
    );
    assert_eq!(
        s.conversation(c).await.expect("read").map(|c| c.name),
        Some("crew".into())
    );
    announced(&t).await;
    assert_eq!(
        t.sink.removals(),
        0,
        "creating, adding, renaming and sending remove no one"
    );
    assert!(s.health().is_ok(), "a working store is healthy");

    // An admin removes a plain member: the rest see it, the removed one gets GroupLeft only.
    let removed = ok(s.remove_member(bob, c, cat).await);
    assert!(
        t.sink.removals() >= 1,
        "the removal hook ran (before the removal became readable)"
    );
    assert_eq!(removed.len(), 1);
    assert_eq!(
        (removed[0].seq, system(&removed[0])),
        (
            Seq(5),
            &SystemEvent::MemberRemoved {
                actor: bob,
                user: cat
            }
        )
    );
    let mut expected = each(&[ann, bob, dan], &format!("msg {c}/5"));
    expected.push((cat, format!("left {c}")));
    assert_eq!(announced(&t).await, expected);
    assert_eq!(s.member(c, cat).await.expect("member"), None);
    assert_eq!(member_ids(s, c).await, vec![ann, bob, dan]);
    assert_eq!(
        s.append(vec![req(c, cat, "late", "hello?")])
            .await
            .expect("append")
            .remove(0)
            .map(|_| ()),
        Err(AppendError::NotMember),
        "a removed member loses access at once"
    );
    assert!(!s
        .conversations_of(cat)
        .await
        .expect("conversations_of")
        .iter()
        .any(|x| x.conversation.id == c));
    send(s, c, dan, "hi-all").await;
    assert!(
        !inbox(s, cat).await.contains(&format!("msg {c}/6")),
        "a removed member gets no more messages"
    );

    // The owner leaves: ownership passes to the admin.
    let left = ok(s.remove_member(ann, c, ann).await);
    assert_eq!(
        left.iter()
            .map(|m| (m.seq, system(m).clone()))
            .collect::<Vec<_>>(),
        vec![
            (Seq(7), SystemEvent::MemberLeft { user: ann }),
            (Seq(8), SystemEvent::OwnerChanged { user: bob }),
        ]
    );
    assert_eq!(role_of(s, c, bob).await, Some(Role::Owner));
    let g2 = s.conversation(c).await.expect("read").expect("group");
    assert_eq!((g2.owner, g2.member_count), (Some(bob), 2));
    let ann_tail = inbox(s, ann).await;
    assert_eq!(
        ann_tail[ann_tail.len() - 2..],
        [format!("msg {c}/6"), format!("left {c}")]
    );

    // No admin left: the longest-standing member inherits.
    let left = ok(s.remove_member(bob, c, bob).await);
    assert_eq!(
        left.iter().map(|m| system(m).clone()).collect::<Vec<_>>(),
        vec![
            SystemEvent::MemberLeft { user: bob },
            SystemEvent::OwnerChanged { user: dan },
        ]
    );
    assert_eq!(role_of(s, c, dan).await, Some(Role::Owner));
    let left = ok(s.remove_member(dan, c, dan).await);
    assert_eq!(
        left.iter().map(|m| system(m).clone()).collect::<Vec<_>>(),
        vec![SystemEvent::MemberLeft { user: dan }],
        "the last one out hands over to nobody"
    );
    let g3 = s.conversation(c).await.expect("read").expect("group");
    assert_eq!((g3.owner, g3.member_count), (None, 0));
    assert!(member_ids(s, c).await.is_empty());
    assert_eq!(
        refused(s.add_members(dan, c, vec![bob]).await),
        GroupError::NotMember
    );

    let all = s
        .messages(c, MessageRange::After(Seq(0)), 100)
        .await
        .expect("messages");
    assert_eq!(seqs(&all), (1..=11).collect::<Vec<_>>());
    assert!(all.windows(2).all(|w| w[0].ts_ms <= w[1].ts_ms));
    assert_eq!(
        all.iter().filter(|m| m.system.is_none()).count(),
        1,
        "one user message among system messages"
    );
}

async fn owner_handover<S: Store>(t: Ctx<S>) {
    let s = &*t.store;
    let u = numbered_users(s, 6).await;
    // Two admins who joined together: the lower user id wins.
    let g = ok(s
        .create_group(u[0], "a".into(), vec![u[1], u[2], u[3], u[4]])
        .await)
    .id;
    ok(s.set_role(u[0], g, u[3], Role::Admin).await);
    ok(s.set_role(u[0], g, u[2], Role::Admin).await);
    let left = ok(s.remove_member(u[0], g, u[0]).await);
    assert_eq!(system(&left[1]), &SystemEvent::OwnerChanged { user: u[2] });
    assert_eq!(
        s.conversation(g).await.expect("read").and_then(|c| c.owner),
        Some(u[2])
    );
    assert_eq!(
        role_of(s, g, u[3]).await,
        Some(Role::Admin),
        "others keep their role"
    );

    // An admin beats a member, and an earlier join beats a lower id.
    let g = ok(s.create_group(u[0], "b".into(), vec![u[4], u[5]]).await).id;
    ok(s.add_members(u[0], g, vec![u[1]]).await);
    ok(s.set_role(u[0], g, u[1], Role::Admin).await);
    ok(s.set_role(u[0], g, u[5], Role::Admin).await);
    let left = ok(s.remove_member(u[0], g, u[0]).await);
    assert_eq!(
        system(&left[1]),
        &SystemEvent::OwnerChanged { user: u[5] },
        "the admin with the lowest joined_seq"
    );

    let g = ok(s.create_group(u[5], "c".into(), vec![u[3]]).await).id;
    ok(s.add_members(u[5], g, vec![u[0], u[1]]).await);
    ok(s.set_role(u[5], g, u[0], Role::Admin).await);
    ok(s.set_role(u[5], g, u[0], Role::Member).await);
    let left = ok(s.remove_member(u[5], g, u[5]).await);
    assert_eq!(
        system(&left[1]),
        &SystemEvent::OwnerChanged { user: u[3] },
        "no admin: the member with the lowest joined_seq"
    );
    assert_eq!(role_of(s, g, u[3]).await, Some(Role::Owner));
}

async fn group_permissions<S: Store>(t: Ctx<S>) {
    let s = &*t.store;
    let us = users(s, &["ann", "bob", "cat", "dan", "eve"]).await;
    let (ann, bob, cat, dan, eve) = (us[0].id, us[1].id, us[2].id, us[3].id, us[4].id);
    let ab = s.direct_conversation(ann, bob).await.expect("direct").id;
    let g = ok(s.create_group(ann, "g".into(), vec![bob, cat, dan]).await).id;
    ok(s.set_role(ann, g, bob, Role::Admin).await);
    ok(s.set_role(ann, g, dan, Role::Admin).await);
    let seq = s.last_seq(g).await.expect("last_seq");
    let all = [ann, bob, cat, dan, eve];
    let before = heads(s, &all).await;
    t.sink.take();

    let missing = ConversationId(99);
    use GroupError::*;
    assert_eq!(
        refused(s.add_members(ann, missing, vec![eve]).await),
        NotFound
    );
    assert_eq!(refused(s.remove_member(ann, missing, bob).await), NotFound);
    assert_eq!(
        refused(s.set_role(ann, missing, bob, Role::Admin).await),
        NotFound
    );
    assert_eq!(
        refused(s.rename_group(ann, missing, "x".into()).await),
        NotFound
    );
    assert_eq!(refused(s.add_members(ann, ab, vec![eve]).await), NotGroup);
    assert_eq!(refused(s.remove_member(ann, ab, bob).await), NotGroup);
    assert_eq!(refused(s.remove_member(ann, ab, ann).await), NotGroup);
    assert_eq!(
        refused(s.set_role(ann, ab, bob, Role::Admin).await),
        NotGroup
    );
    assert_eq!(refused(s.rename_group(ann, ab, "x".into()).await), NotGroup);
    // Outsiders.
    assert_eq!(refused(s.add_members(eve, g, vec![eve]).await), NotMember);
    assert_eq!(refused(s.remove_member(eve, g, cat).await), NotMember);
    assert_eq!(refused(s.remove_member(eve, g, eve).await), NotMember);
    assert_eq!(
        refused(s.set_role(eve, g, cat, Role::Admin).await),
        NotMember
    );
    assert_eq!(refused(s.rename_group(eve, g, "x".into()).await), NotMember);
    // Targets that are not members.
    assert_eq!(refused(s.remove_member(ann, g, eve).await), NotMember);
    assert_eq!(
        refused(s.remove_member(ann, g, UserId(99)).await),
        NotMember
    );
    assert_eq!(
        refused(s.set_role(ann, g, eve, Role::Admin).await),
        NotMember
    );
    // Plain members.
    assert_eq!(refused(s.add_members(cat, g, vec![eve]).await), Forbidden);
    assert_eq!(refused(s.rename_group(cat, g, "x".into()).await), Forbidden);
    assert_eq!(refused(s.remove_member(cat, g, bob).await), Forbidden);
    assert_eq!(refused(s.remove_member(cat, g, ann).await), Forbidden);
    assert_eq!(
        refused(s.set_role(cat, g, cat, Role::Admin).await),
        Forbidden
    );
    // Admins: not the owner, not other admins, no roles.
    assert_eq!(refused(s.remove_member(bob, g, ann).await), Forbidden);
    assert_eq!(refused(s.remove_member(bob, g, dan).await), Forbidden);
    assert_eq!(
        refused(s.set_role(bob, g, cat, Role::Admin).await),
        Forbidden
    );
    // The owner: no second owner, and not their own role.
    assert_eq!(
        refused(s.set_role(ann, g, bob, Role::Owner).await),
        Forbidden
    );
    assert_eq!(
        refused(s.set_role(ann, g, ann, Role::Member).await),
        Forbidden
    );
    // Unknown users; the lowest unknown id is named.
    assert_eq!(
        refused(
            s.add_members(ann, g, vec![UserId(98), eve, UserId(97)])
                .await
        ),
        UnknownUser(UserId(97))
    );
    assert_eq!(
        refused(
            s.create_group(ann, "x".into(), vec![bob, UserId(99), UserId(98)])
                .await
        ),
        UnknownUser(UserId(98))
    );
    assert_eq!(
        refused(s.create_group(UserId(99), "x".into(), vec![bob]).await),
        UnknownUser(UserId(99))
    );

    assert_eq!(
        s.last_seq(g).await.expect("last_seq"),
        seq,
        "refusals append nothing"
    );
    assert_eq!(heads(s, &all).await, before, "refusals announce nothing");
    assert!(t.sink.events().is_empty() && t.sink.notices().is_empty());
    let next = ok(s.create_group(eve, "y".into(), vec![]).await);
    assert_eq!(
        next.id,
        ConversationId(g.0 + 1),
        "refused creates burn no id"
    );
    assert_eq!(next.member_count, 1, "a group of one");

    // What admins may do.
    let added = ok(s.add_members(bob, g, vec![eve]).await).expect("eve is new");
    assert_eq!(added.sender_id, bob);
    ok(s.remove_member(dan, g, eve).await);
    ok(s.remove_member(bob, g, cat).await);
    ok(s.rename_group(dan, g, "z".into()).await);
    // The owner may remove an admin.
    ok(s.remove_member(ann, g, dan).await);
    assert_eq!(member_ids(s, g).await, vec![ann, bob]);
}

async fn group_full<S: Store>(t: Ctx<S>) {
    let s = &*t.store;
    let max = SMALL_POLICY.members_max;
    let u = numbered_users(s, 8).await;
    assert_eq!(
        refused(s.create_group(u[0], "big".into(), u[1..7].to_vec()).await),
        GroupError::GroupFull { max },
        "7 members with the owner"
    );
    let g = ok(s.create_group(u[0], "big".into(), u[..6].to_vec()).await);
    assert_eq!((g.id, g.member_count), (ConversationId(1), 6));
    assert_eq!(
        refused(s.add_members(u[0], g.id, vec![u[6], u[1]]).await),
        GroupError::GroupFull { max }
    );
    assert_eq!(
        ok(s.add_members(u[0], g.id, vec![u[1]]).await),
        None,
        "nobody new is not too many"
    );
    ok(s.remove_member(u[0], g.id, u[5]).await);
    ok(s.add_members(u[0], g.id, vec![u[6]]).await).expect("room for one");
    assert_eq!(
        refused(s.add_members(u[0], g.id, vec![u[7]]).await),
        GroupError::GroupFull { max }
    );
    assert_eq!(
        s.conversation(g.id)
            .await
            .expect("read")
            .map(|c| c.member_count),
        Some(6)
    );
}

async fn write_and_read_fanout<S: Store>(t: Ctx<S>) {
    let s = &*t.store;
    assert_eq!(SMALL_POLICY.fanout_write_max, 3);
    let u = numbered_users(s, 6).await;
    let c = ok(s.create_group(u[0], "g".into(), vec![u[1], u[2]]).await).id;
    announced(&t).await;
    assert!(t.sink.take_notices().is_empty());

    // 3 members: write fan-out.
    send(s, c, u[0], "a").await;
    assert_eq!(announced(&t).await, each(&u[..3], &format!("msg {c}/2")));
    assert!(t.sink.take_notices().is_empty());

    // 4 members: the add itself is announced by read fan-out.
    let added = ok(s.add_members(u[0], c, vec![u[3]]).await).expect("new");
    assert_eq!(added.seq, Seq(3));
    assert_eq!(
        announced(&t).await,
        vec![(u[3], format!("joined {c}"))],
        "no message events past the threshold, only the join"
    );
    assert_eq!(
        t.sink.take_notices(),
        vec![ConversationNotice {
            conversation_id: c,
            last_seq: Seq(3),
            members: u[..4].to_vec().into(),
        }]
    );
    // Messages of one commit share one notice with the last seq.
    append_ok(s, vec![req(c, u[1], "b", "x"), req(c, u[3], "c", "y")]).await;
    assert!(announced(&t).await.is_empty());
    let notices = t.sink.take_notices();
    assert_eq!(notices.len(), 1, "coalesced: {notices:?}");
    assert_eq!(
        (notices[0].conversation_id, notices[0].last_seq),
        (c, Seq(5))
    );
    assert_eq!(&notices[0].members[..], &u[..4]);
    assert_eq!(
        inbox(s, u[3]).await,
        vec![format!("joined {c}")],
        "read fan-out writes no message events"
    );
    assert_eq!(s.last_seq(c).await.expect("last_seq"), Seq(5));
    assert_eq!(
        seqs(
            &s.messages(c, MessageRange::After(Seq(0)), 10)
                .await
                .expect("messages")
        ),
        vec![1, 2, 3, 4, 5],
        "the timeline has them all"
    );
    // Read receipts are not fanned out in read-fan-out groups.
    assert_eq!(ok(s.mark_read(u[1], c, Seq(5)).await), Seq(5));
    assert_eq!(announced(&t).await, vec![(u[1], format!("read {c} 5"))]);

    // Back to 3: the removal is announced by write fan-out to the remaining members.
    let removed = ok(s.remove_member(u[0], c, u[3]).await);
    assert_eq!(removed[0].seq, Seq(6));
    let mut expected = each(&u[..3], &format!("msg {c}/6"));
    expected.push((u[3], format!("left {c}")));
    assert_eq!(announced(&t).await, expected);
    assert!(t.sink.take_notices().is_empty());
    send(s, c, u[2], "d").await;
    assert_eq!(announced(&t).await, each(&u[..3], &format!("msg {c}/7")));
    assert_eq!(
        inbox(s, u[3]).await,
        vec![format!("joined {c}"), format!("left {c}")],
        "a removed member gets nothing more"
    );
    ok(s.mark_read(u[1], c, Seq(7)).await);
    assert_eq!(
        announced(&t).await,
        vec![
            (u[1], format!("read {c} 7")),
            (u[0], format!("receipt {c} {} 7", u[1])),
            (u[2], format!("receipt {c} {} 7", u[1])),
        ]
    );

    // Over and down again, staying above the threshold: notices carry the current members.
    ok(s.add_members(u[0], c, vec![u[4], u[5]]).await);
    announced(&t).await;
    t.sink.take_notices();
    ok(s.remove_member(u[0], c, u[4]).await);
    assert_eq!(announced(&t).await, vec![(u[4], format!("left {c}"))]);
    assert_eq!(
        t.sink.take_notices(),
        vec![ConversationNotice {
            conversation_id: c,
            last_seq: Seq(9),
            members: vec![u[0], u[1], u[2], u[5]].into(),
        }]
    );

    // A group created above the threshold announces its creation by notice.
    let big = ok(s.create_group(u[5], "big".into(), u[..4].to_vec()).await).id;
    let mut expected: Vec<UserId> = u[..4].to_vec();
    expected.push(u[5]);
    assert_eq!(
        announced(&t).await,
        each(&expected, &format!("joined {big}"))
    );
    assert_eq!(
        t.sink.take_notices(),
        vec![ConversationNotice {
            conversation_id: big,
            last_seq: Seq(1),
            members: expected.into(),
        }]
    );
}

async fn direct_always_writes_fanout<S: Store>(t: Ctx<S>) {
    let s = &*t.store;
    let us = users(s, &["ann", "bob"]).await;
    let (ann, bob) = (us[0].id, us[1].id);
    let ab = s.direct_conversation(ann, bob).await.expect("direct").id;
    send(s, ab, ann, "1").await;
    assert_eq!(
        announced(&t).await,
        each(&[ann, bob], &format!("msg {ab}/1")),
        "direct conversations use write fan-out whatever the threshold"
    );
    ok(s.mark_read(bob, ab, Seq(1)).await);
    assert_eq!(
        announced(&t).await,
        vec![
            (bob, format!("read {ab} 1")),
            (ann, format!("receipt {ab} {bob} 1")),
        ]
    );
    let g = ok(s.create_group(ann, "pair".into(), vec![bob]).await).id;
    assert_eq!(
        announced(&t).await,
        each(&[ann, bob], &format!("joined {g}")),
        "a group of two is past a threshold of one"
    );
    assert_eq!(t.sink.take_notices().len(), 1);
    assert!(t.sink.notices().is_empty());
}

/// Read receipts are pushed as events only in groups of at most `receipt_events_max` members:
/// beyond, every read would write an event for each other member (n² events per message if
/// everyone reads everything). The read state itself is kept for queries.
async fn receipt_events_only_in_small_groups<S: Store>(t: Ctx<S>) {
    let s = &*t.store;
    let us = users(s, &["ann", "bob", "cat"]).await;
    let (ann, bob, cat) = (us[0].id, us[1].id, us[2].id);
    assert_eq!(RECEIPT_POLICY.receipt_events_max, 2);

    let pair = ok(s.create_group(ann, "pair".into(), vec![bob]).await);
    send(s, pair.id, ann, "p1").await;
    announced(&t).await;
    assert_eq!(ok(s.mark_read(bob, pair.id, Seq(2)).await), Seq(2));
    assert_eq!(
        announced(&t).await,
        vec![
            (bob, format!("read {} 2", pair.id)),
            (ann, format!("receipt {} {bob} 2", pair.id)),
        ],
        "a group of two pushes receipts"
    );

    let trio = ok(s.create_group(ann, "trio".into(), vec![bob, cat]).await);
    send(s, trio.id, ann, "t1").await;
    assert_eq!(
        announced(&t).await.len(),
        3 * 3,
        "three members still get write fan-out: each a `group_joined` and two messages"
    );
    assert_eq!(ok(s.mark_read(bob, trio.id, Seq(2)).await), Seq(2));
    assert_eq!(
        announced(&t).await,
        vec![(bob, format!("read {} 2", trio.id))],
        "a group of three only tells the reader's own devices"
    );
    let member = s.member(trio.id, bob).await.expect("read").expect("member");
    assert_eq!(member.read_seq, Seq(2), "kept for receipt queries");
}

async fn unread_and_mark_read<S: Store>(t: Ctx<S>) {
    let s = &*t.store;
    let us = users(s, &["ann", "bob", "cat"]).await;
    let (ann, bob, cat) = (us[0].id, us[1].id, us[2].id);
    let ab = s.direct_conversation(ann, bob).await.expect("direct");
    // Every read below also checks that the single-row read agrees with the list.
    let summary = |user: UserId, conv: ConversationId| async move {
        let listed = s
            .conversations_of(user)
            .await
            .expect("conversations_of")
            .into_iter()
            .find(|x| x.conversation.id == conv)
            .expect("listed");
        let single = s
            .conversation_summary(conv, user)
            .await
            .expect("conversation_summary");
        assert_eq!(single.as_ref(), Some(&listed), "one row = the list's row");
        listed
    };
    assert_eq!(
        s.conversation_summary(ab.id, cat).await.expect("read"),
        None,
        "no row for a non-member"
    );
    let empty = summary(bob, ab.id).await;
    assert_eq!(empty.conversation, ab);
    assert_eq!(empty.last_message, None);
    assert_eq!(empty.unread_count, 0);
    assert_eq!(
        Some(empty.member),
        s.member(ab.id, bob).await.expect("member")
    );

    for i in 1..=3 {
        send(s, ab.id, ann, &format!("a{i}")).await;
    }
    let last = send(s, ab.id, bob, "b1").await.message;
    assert_eq!(
        summary(bob, ab.id).await.unread_count,
        3,
        "own messages don't count"
    );
    assert_eq!(summary(ann, ab.id).await.unread_count, 1);
    assert_eq!(summary(ann, ab.id).await.last_message, Some(last.clone()));
    assert_eq!(s.last_seq(ab.id).await.expect("last_seq"), Seq(4));
    assert_eq!(
        s.last_seq(ConversationId(99)).await.expect("last_seq"),
        Seq(0)
    );
    announced(&t).await;

    assert_eq!(ok(s.mark_read(bob, ab.id, Seq(2)).await), Seq(2));
    assert_eq!(
        announced(&t).await,
        vec![
            (bob, format!("read {} 2", ab.id)),
            (ann, format!("receipt {} {bob} 2", ab.id)),
        ]
    );
    let b = summary(bob, ab.id).await;
    assert_eq!((b.member.read_seq, b.unread_count), (Seq(2), 1));
    assert_eq!(
        ok(s.mark_read(bob, ab.id, Seq(1)).await),
        Seq(2),
        "read_seq never moves back"
    );
    assert_eq!(ok(s.mark_read(bob, ab.id, Seq(2)).await), Seq(2));
    assert!(announced(&t).await.is_empty(), "no move, no events");
    assert_eq!(
        ok(s.mark_read(bob, ab.id, Seq(100)).await),
        Seq(4),
        "clamped to the last seq"
    );
    assert_eq!(summary(bob, ab.id).await.unread_count, 0);
    assert_eq!(announced(&t).await.len(), 2);
    assert_eq!(
        refused(s.mark_read(cat, ab.id, Seq(1)).await),
        GroupError::NotMember
    );
    assert_eq!(
        refused(s.mark_read(bob, ConversationId(99), Seq(1)).await),
        GroupError::NotMember
    );

    // Groups: members start having read the creation; system messages by others count.
    let g = ok(s.create_group(ann, "g".into(), vec![bob, cat]).await);
    assert_eq!(summary(bob, g.id).await.unread_count, 0);
    send(s, g.id, ann, "g1").await;
    ok(s.rename_group(ann, g.id, "g2".into()).await);
    ok(s.set_role(ann, g.id, cat, Role::Admin).await);
    let renamed = ok(s.rename_group(cat, g.id, "g3".into()).await);
    let b = summary(bob, g.id).await;
    assert_eq!(b.unread_count, 4);
    assert_eq!(b.conversation.name, "g3");
    assert_eq!(b.last_message, Some(renamed));
    assert_eq!(summary(ann, g.id).await.unread_count, 1);
    assert_eq!(summary(cat, g.id).await.unread_count, 3);
    announced(&t).await;
    assert_eq!(ok(s.mark_read(cat, g.id, Seq(4)).await), Seq(4));
    assert_eq!(
        announced(&t).await,
        vec![
            (cat, format!("read {} 4", g.id)),
            (ann, format!("receipt {} {cat} 4", g.id)),
            (bob, format!("receipt {} {cat} 4", g.id)),
        ],
        "write-fan-out groups send receipts to the other members"
    );
    assert_eq!(
        summary(cat, g.id).await.unread_count,
        0,
        "only her own rename is left"
    );
    // A member added later reads from their join on.
    let dan = s
        .create_user("dan".into(), "h".into())
        .await
        .expect("dan")
        .id;
    ok(s.add_members(ann, g.id, vec![dan]).await);
    let d = summary(dan, g.id).await;
    assert_eq!(
        (d.member.joined_seq, d.member.read_seq, d.unread_count),
        (Seq(6), Seq(6), 0)
    );

    // The list: most recent activity first, ties by id, highest first.
    let list = s.conversations_of(ann).await.expect("conversations_of");
    assert_eq!(list.len(), 2);
    let activity: Vec<(u64, ConversationId)> = list
        .iter()
        .map(|x| {
            (
                x.last_message
                    .as_ref()
                    .map_or(x.conversation.created_ms, |m| m.ts_ms),
                x.conversation.id,
            )
        })
        .collect();
    let mut sorted = activity.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(activity, sorted);
    assert!(s
        .conversations_of(UserId(99))
        .await
        .expect("conversations_of")
        .is_empty());
}

async fn mute<S: Store>(t: Ctx<S>) {
    let s = &*t.store;
    let us = users(s, &["ann", "bob", "cat"]).await;
    let (ann, bob, cat) = (us[0].id, us[1].id, us[2].id);
    let ab = s.direct_conversation(ann, bob).await.expect("direct").id;
    ok(s.set_muted(bob, ab, true).await);
    let muted = |user| async move { s.member(ab, user).await.expect("member").map(|m| m.muted) };
    assert_eq!(muted(bob).await, Some(true));
    assert_eq!(muted(ann).await, Some(false), "per user");
    assert!(
        s.conversations_of(bob).await.expect("list")[0].member.muted,
        "listed muted"
    );
    assert_eq!(
        refused(s.set_muted(cat, ab, true).await),
        GroupError::NotMember
    );
    assert_eq!(
        refused(s.set_muted(bob, ConversationId(99), true).await),
        GroupError::NotMember
    );
    ok(s.set_muted(bob, ab, true).await);
    ok(s.set_muted(bob, ab, false).await);
    assert_eq!(muted(bob).await, Some(false));
    assert!(t.sink.events().is_empty(), "muting announces nothing");
}

async fn members_paging<S: Store>(t: Ctx<S>) {
    let s = &*t.store;
    let u = numbered_users(s, 7).await;
    let g = ok(s.create_group(u[3], "g".into(), u[..6].to_vec()).await).id;
    let page = |after: Option<u64>, limit| async move {
        s.members(g, after.map(UserId), limit)
            .await
            .expect("members")
            .iter()
            .map(|m| m.user_id.0)
            .collect::<Vec<_>>()
    };
    assert_eq!(page(None, 2).await, vec![1, 2]);
    assert_eq!(page(Some(2), 2).await, vec![3, 4]);
    assert_eq!(page(Some(4), 10).await, vec![5, 6]);
    assert_eq!(page(Some(3), 1).await, vec![4]);
    assert!(page(Some(6), 10).await.is_empty());
    assert!(page(Some(u64::MAX), 10).await.is_empty());
    assert!(page(None, 0).await.is_empty());
    assert!(s
        .members(ConversationId(99), None, 10)
        .await
        .expect("members")
        .is_empty());
    assert_eq!(s.member(g, u[6]).await.expect("member"), None);
    assert_eq!(role_of(s, g, u[3]).await, Some(Role::Owner));
}

async fn last_seen<S: Store>(t: Ctx<S>) {
    let s = &*t.store;
    let us = users(s, &["ann", "bob", "cat"]).await;
    let ids: Vec<UserId> = us.iter().map(|u| u.id).collect();
    assert_eq!(s.last_seen(&ids).await.expect("read"), vec![0, 0, 0]);
    s.record_last_seen(vec![(ids[0], 1_000), (ids[1], 2_000)])
        .await
        .expect("record");
    assert_eq!(
        s.last_seen(&ids).await.expect("read"),
        vec![1_000, 2_000, 0]
    );
    s.record_last_seen(vec![(ids[0], 500), (ids[1], 3_000), (ids[0], 1_500)])
        .await
        .expect("record");
    assert_eq!(
        s.last_seen(&ids).await.expect("read"),
        vec![1_500, 3_000, 0],
        "a recorded time never moves backwards"
    );
    assert_eq!(
        s.last_seen(&[ids[2], ids[0], ids[0]]).await.expect("read"),
        vec![0, 1_500, 1_500],
        "answers follow the order asked"
    );
    // One pair over the bound: refused whole, nothing recorded.
    let over = vec![(ids[2], 9_000); crate::LAST_SEEN_PER_WRITE_MAX + 1];
    assert!(matches!(
        s.record_last_seen(over).await,
        Err(StoreError::TooMany(_))
    ));
    assert_eq!(s.last_seen(&ids[2..]).await.expect("read"), vec![0]);
    assert!(t.sink.events().is_empty(), "presence makes no inbox events");
}
