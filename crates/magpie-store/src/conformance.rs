//! The conformance suite: the observable behaviour every [`Store`] backend must have.
//!
//! [`run_all`] runs every check against a fresh store from a factory; a failing check panics
//! with its name in the message. Backends' tests call it like this:
//!
//! ```no_run
//! use magpie_store::{conformance, MemoryStore};
//!
//! // In a backend's tests, under #[tokio::test(flavor = "multi_thread")]:
//! async fn memory_store_conforms() {
//!     conformance::run_all(MemoryStore::new).await;
//! }
//! ```
//!
//! Must run on a multi-threaded tokio runtime (backends may use `spawn_blocking`).

use std::future::Future;
use std::sync::Arc;

use magpie_core::{
    ClientMsgId, Conversation, ConversationId, ConversationKind, Cursor, DeviceId, Event,
    EventPayload, Message, Seq, User, UserEvent, UserId,
};
use parking_lot::Mutex;

use crate::{AppendError, AppendRequest, Appended, CommitSink, MessageRange, Store, StoreError};

/// A sink that records every event it is told about, for tests.
#[derive(Default)]
pub struct RecordingSink {
    /// Every event so far, in the order the store announced them.
    events: Mutex<Vec<UserEvent>>,
}

impl RecordingSink {
    /// An empty recorder, ready to hand to a store.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A copy of everything recorded so far.
    pub fn events(&self) -> Vec<UserEvent> {
        self.events.lock().clone()
    }

    /// Everything recorded so far; the recorder is left empty.
    pub fn take(&self) -> Vec<UserEvent> {
        std::mem::take(&mut *self.events.lock())
    }
}

impl CommitSink for RecordingSink {
    fn committed(&self, events: &[UserEvent]) {
        self.events.lock().extend_from_slice(events);
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
    "inbox_cursors_gap_free",
    "dedup",
    "per_item_errors",
    "message_ranges",
    "events_paging",
    "sink_gets_exactly_new_events",
    "long_text",
];

/// Runs every check, each against a fresh store made by `make` with a fresh [`RecordingSink`].
/// Panics on the first failure, naming the check.
pub async fn run_all<S, F>(make: F)
where
    S: Store,
    F: Fn(Arc<dyn CommitSink>) -> S,
{
    for name in CHECKS {
        run_one(name, &make).await;
    }
}

/// Runs the check called `name` (one of [`CHECKS`]) against a fresh store.
pub async fn run_one<S, F>(name: &str, make: F)
where
    S: Store,
    F: Fn(Arc<dyn CommitSink>) -> S,
{
    let sink = RecordingSink::new();
    let store = Arc::new(make(sink.clone()));
    eprintln!("conformance: {name}");
    let t = Ctx { store, sink };
    match name {
        "accounts" => announce(name, accounts(t)).await,
        "concurrent_usernames" => announce(name, concurrent_usernames(t)).await,
        "devices" => announce(name, devices(t)).await,
        "direct_conversations" => announce(name, direct_conversations(t)).await,
        "append_seqs_gap_free" => announce(name, append_seqs_gap_free(t)).await,
        "concurrent_appends_gap_free" => announce(name, concurrent_appends_gap_free(t)).await,
        "inbox_cursors_gap_free" => announce(name, inbox_cursors_gap_free(t)).await,
        "dedup" => announce(name, dedup(t)).await,
        "per_item_errors" => announce(name, per_item_errors(t)).await,
        "message_ranges" => announce(name, message_ranges(t)).await,
        "events_paging" => announce(name, events_paging(t)).await,
        "sink_gets_exactly_new_events" => announce(name, sink_gets_exactly_new_events(t)).await,
        "long_text" => announce(name, long_text(t)).await,
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

fn seqs(ms: &[Message]) -> Vec<u64> {
    ms.iter().map(|m| m.seq.0).collect()
}

fn cursors(es: &[Event]) -> Vec<u64> {
    es.iter().map(|e| e.cursor.0).collect()
}

fn event_message(e: &Event) -> &Message {
    match &e.payload {
        EventPayload::Message(m) => m,
    }
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

    assert_eq!(s.conversation(ab.id).await.expect("read"), Some(ab));
    assert_eq!(s.conversation(cb.id).await.expect("read"), Some(cb));
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
