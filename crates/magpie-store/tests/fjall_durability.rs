//! FjallStore across restarts, and against the MemoryStore model on random operation sequences.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::Poll;

use magpie_core::{
    ClientMsgId, Conversation, ConversationId, Cursor, DeviceId, Event, EventPayload,
    FriendRequest, Message, RequestId, Role, Seq, UserEvent, UserId,
};
use magpie_store::conformance::RecordingSink;
use magpie_store::{
    AppendRequest, Appended, ConversationNotice, ConversationSummary, FjallConfig, FjallStore,
    GroupPolicy, MemoryStore, MessageRange, NoopSink, Store, StoreError,
};
use proptest::prelude::*;

fn open(dir: &Path, sink: Arc<RecordingSink>) -> FjallStore {
    FjallStore::open(FjallConfig::for_tests(dir), sink).expect("open")
}

/// The policy of the model-based test: small enough that random groups cross the fan-out
/// threshold and hit the size limit.
const MODEL_POLICY: GroupPolicy = GroupPolicy {
    members_max: 4,
    fanout_write_max: 3,
    receipt_events_max: 3,
};

/// A directory holding a new, empty, closed database. Creating a database costs about a second
/// (fjall syncs once per keyspace it creates); copying a pristine one costs milliseconds, and
/// the model-based test needs one per case.
fn fresh_db_dir() -> tempfile::TempDir {
    static TEMPLATE: OnceLock<tempfile::TempDir> = OnceLock::new();
    let template = TEMPLATE.get_or_init(|| {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
        FjallStore::open(FjallConfig::for_tests(dir.path()), Arc::new(NoopSink))
            .expect("open")
            .close();
        dir
    });
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(template.path(), dir.path());
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            std::fs::create_dir(&target).expect("mkdir");
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

fn open_with(dir: &Path, sink: Arc<RecordingSink>, policy: GroupPolicy) -> FjallStore {
    let config = FjallConfig {
        policy,
        ..FjallConfig::for_tests(dir)
    };
    FjallStore::open(config, sink).expect("open")
}

fn req(conv: ConversationId, sender: UserId, id: &str, text: &str) -> AppendRequest {
    AppendRequest {
        conversation_id: conv,
        sender_id: sender,
        client_msg_id: ClientMsgId::new(id).expect("valid id"),
        text: text.into(),
    }
}

async fn send(store: &dyn Store, conv: ConversationId, sender: UserId, id: &str) -> Appended {
    store
        .append(vec![req(conv, sender, id, &format!("text {id}"))])
        .await
        .expect("append")
        .remove(0)
        .expect("valid message")
}

#[tokio::test(flavor = "multi_thread")]
async fn reopen_keeps_everything_and_counters_continue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = RecordingSink::new();
    let (ann, bob, ab, first_messages, ann_device) = {
        let store = open(dir.path(), sink.clone());
        let ann = store
            .create_user("ann".into(), "h-ann".into())
            .await
            .expect("ann");
        let bob = store
            .create_user("bob".into(), "h-bob".into())
            .await
            .expect("bob");
        let ann_device = store
            .create_device(ann.id, "laptop".into(), [1; 32])
            .await
            .expect("device");
        let bob_device = store
            .create_device(bob.id, "phone".into(), [2; 32])
            .await
            .expect("device");
        store
            .ack_cursor(ann_device.id, Cursor(2))
            .await
            .expect("ack");
        store.revoke_device(bob_device.id).await.expect("revoke");
        let ab = store
            .direct_conversation(ann.id, bob.id)
            .await
            .expect("direct");
        for id in ["m1", "m2", "m3"] {
            send(&store, ab.id, ann.id, id).await;
        }
        let first_messages = store
            .messages(ab.id, MessageRange::Latest, 10)
            .await
            .expect("read");
        store.close();
        assert!(matches!(
            store.create_user("late".into(), "h".into()).await,
            Err(StoreError::Closed)
        ));
        store.close(); // idempotent
        (ann, bob, ab, first_messages, ann_device)
    };

    let store = open(dir.path(), sink.clone());
    assert_eq!(
        store.user_by_id(ann.id).await.expect("read"),
        Some(ann.clone())
    );
    assert_eq!(
        store.user_by_name("bob").await.expect("read"),
        Some(bob.clone())
    );
    let device = store
        .device_by_token([1; 32])
        .await
        .expect("read")
        .expect("ann's device");
    assert_eq!((device.id, device.cursor), (ann_device.id, Cursor(2)));
    assert_eq!(
        store.device_by_token([2; 32]).await.expect("read"),
        None,
        "revocation survived"
    );
    assert_eq!(
        store.conversation(ab.id).await.expect("read"),
        Some(ab.clone())
    );
    assert_eq!(
        store
            .direct_conversation(bob.id, ann.id)
            .await
            .expect("direct"),
        ab
    );
    assert_eq!(
        store
            .messages(ab.id, MessageRange::Latest, 10)
            .await
            .expect("read"),
        first_messages
    );
    assert_eq!(store.inbox_head(bob.id).await.expect("read"), Cursor(3));

    // Counters continue where they stopped, without gaps.
    let cat = store
        .create_user("cat".into(), "h".into())
        .await
        .expect("cat");
    assert_eq!(cat.id, UserId(3));
    assert_eq!(
        store
            .create_device(cat.id, "x".into(), [3; 32])
            .await
            .expect("device")
            .id,
        DeviceId(3)
    );
    assert_eq!(
        store
            .direct_conversation(ann.id, cat.id)
            .await
            .expect("direct")
            .id,
        ConversationId(2)
    );
    let next = send(&store, ab.id, bob.id, "m4").await;
    assert_eq!((next.message.seq, next.duplicate), (Seq(4), false));
    assert!(next.message.ts_ms >= first_messages[2].ts_ms);
    let events = store.events(ann.id, Cursor(0), 10).await.expect("read");
    assert_eq!(
        events.iter().map(|e| e.cursor.0).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );

    // The dedup index survived: a resend from before the restart is a duplicate.
    let resent = send(&store, ab.id, ann.id, "m2").await;
    assert!(resent.duplicate);
    assert_eq!(*resent.message, first_messages[1]);
    assert_eq!(store.inbox_head(ann.id).await.expect("read"), Cursor(4));
    drop(store); // Drop closes too.

    let store = open(dir.path(), Arc::new(RecordingSink::default()));
    assert_eq!(store.inbox_head(bob.id).await.expect("read"), Cursor(4));
    assert_eq!(
        store
            .create_user("dan".into(), "h".into())
            .await
            .expect("dan")
            .id,
        UserId(4)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn opening_a_locked_directory_fails_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first =
        FjallStore::open(FjallConfig::for_tests(dir.path()), Arc::new(NoopSink)).expect("open");
    // Refused with a message that says why (before: "storage engine error: Locked").
    match FjallStore::open(FjallConfig::for_tests(dir.path()), Arc::new(NoopSink)) {
        Err(e @ StoreError::InUse) => {
            assert!(e.to_string().contains("another magpie server"), "{e}");
        }
        Err(e) => panic!("expected InUse, got {e}"),
        Ok(_) => panic!("a second store opened the same directory"),
    }
}

/// An unread count reads whole messages to learn their senders, so it stops after about
/// 32 MiB of them: a conversation full of 400 KB messages gives a lower bound instead of
/// gigabytes of reads per conversation list.
#[tokio::test(flavor = "multi_thread")]
async fn unread_counts_stop_reading_after_a_byte_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), RecordingSink::new());
    let ann = store
        .create_user("ann".into(), "h".into())
        .await
        .expect("ann");
    let bob = store
        .create_user("bob".into(), "h".into())
        .await
        .expect("bob");
    let ab = store
        .direct_conversation(ann.id, bob.id)
        .await
        .expect("direct");
    let text = "😀".repeat(magpie_core::limits::MESSAGE_CHARS_MAX); // 400,000 bytes
    const SENT: u64 = 120; // 48 MB
    for i in 0..SENT {
        store
            .append(vec![req(ab.id, ann.id, &format!("big{i}"), &text)])
            .await
            .expect("append")
            .remove(0)
            .expect("appended");
    }
    let rows = store.conversations_of(bob.id).await.expect("list");
    let unread = rows[0].unread_count;
    // 32 MiB of 400 KB messages is 83.9: the scan stops after the 84th.
    assert!((80..SENT).contains(&unread), "{unread}");
    // Small messages are all counted.
    let carl = store
        .create_user("carl".into(), "h".into())
        .await
        .expect("carl");
    let ac = store
        .direct_conversation(ann.id, carl.id)
        .await
        .expect("direct");
    for i in 0..SENT {
        send(&store, ac.id, ann.id, &format!("small{i}")).await;
    }
    let rows = store.conversations_of(carl.id).await.expect("list");
    assert_eq!(rows[0].unread_count, SENT);
}

// ---------------------------------------------------------------------------------------------
// Model-based property test: MemoryStore is the model, FjallStore must match it exactly.

/// A user named by a group op. Picks are resolved against the model's state right before the
/// op runs (see [`resolve`]), so that random ops often come from someone allowed to do them.
#[derive(Debug, Clone, Copy)]
enum Who {
    /// This id (users 1..=5 exist in every scenario; 6 never does).
    Id(u64),
    /// The n-th current member of the op's conversation, modulo their number.
    Member(usize),
    /// The owner of the op's conversation.
    Owner,
}

/// A conversation named by an op, resolved like [`Who`].
#[derive(Debug, Clone, Copy)]
enum Conv {
    /// This id (it may not exist).
    Id(u64),
    /// The n-th existing group, modulo their number.
    Group(usize),
    /// The n-th existing conversation of any kind, modulo their number.
    Any(usize),
}

/// One step of a random scenario. Small id ranges so that ops often hit existing records,
/// collide (names, client ids) or refer to missing ones.
#[derive(Debug, Clone)]
enum Op {
    CreateUser(u8),
    CreateDevice(u64, u8),
    Revoke(u64),
    Ack(u64, u64),
    Direct(u64, u64),
    /// (conversation, sender, client id) per message of one batch.
    Append(Vec<(Conv, Who, u8)>),
    /// Writes issued together without waiting, so the writer may fold them into one batch.
    Group(Vec<Op>),
    /// (conversation, range kind, seq, limit).
    Messages(u64, u8, u64, usize),
    /// (user, after, limit).
    Events(u64, u64, usize),
    /// (from, to).
    RequestFriend(u64, u64),
    /// (user, request, accept).
    AnswerFriend(u64, u64, bool),
    /// (n, by the addressee, accept): answer the n-th pending request (modulo their number);
    /// resolved into `AnswerFriend` by the addressee or, if not, by the requester.
    AnswerPending(usize, bool, bool),
    /// (user, other).
    RemoveFriend(u64, u64),
    /// (owner, members).
    CreateGroup(u64, Vec<u64>),
    /// (actor, conversation, users).
    AddMembers(Who, Conv, Vec<u64>),
    /// (actor, conversation, user).
    RemoveMember(Who, Conv, Who),
    /// (actor, conversation, user, 0 = member / 1 = admin / 2 = owner).
    SetRole(Who, Conv, Who, u8),
    /// (actor, conversation).
    Rename(Who, Conv),
    /// (user, conversation, seq).
    MarkRead(Who, Conv, u64),
    /// (user, conversation, muted).
    SetMuted(Who, Conv, bool),
    /// Reads of one user's friends, requests and conversation list.
    UserState(u64),
    /// (conversation, after, limit): members, the conversation and its last seq.
    ConvState(u64, u64, usize),
}

/// Ops that go straight to the writer queue on their first poll (no read first), so a group's
/// queue order is its list order and the memory model can replay it sequentially.
fn write_op() -> impl Strategy<Value = Op> {
    // Five users exist from the prelude on (ids 1..=5); 6 never does.
    let user = || 1u64..7;
    let conv = || {
        prop_oneof![
            1 => (1u64..8).prop_map(Conv::Id),
            3 => (0usize..4).prop_map(Conv::Group),
            2 => (0usize..6).prop_map(Conv::Any),
        ]
    };
    let users = || prop::collection::vec(prop_oneof![9 => 1u64..6, 1 => Just(6u64)], 0..4);
    let who = || {
        prop_oneof![
            2 => (1u64..7).prop_map(Who::Id),
            3 => (0usize..5).prop_map(Who::Member),
            2 => Just(Who::Owner),
        ]
    };
    prop_oneof![
        2 => (0u8..5).prop_map(Op::CreateUser),
        1 => (user(), 0u8..4).prop_map(|(u, t)| Op::CreateDevice(u, t)),
        1 => (0u64..5).prop_map(Op::Revoke),
        1 => (0u64..5, 0u64..20).prop_map(|(d, c)| Op::Ack(d, c)),
        6 => prop::collection::vec((conv(), who(), 0u8..6), 1..4).prop_map(Op::Append),
        3 => (user(), user()).prop_map(|(a, b)| Op::RequestFriend(a, b)),
        1 => (user(), 0u64..6, any::<bool>()).prop_map(|(u, r, a)| Op::AnswerFriend(u, r, a)),
        2 => (0usize..4, prop::bool::weighted(0.8), prop::bool::weighted(0.7))
            .prop_map(|(n, to, a)| Op::AnswerPending(n, to, a)),
        1 => (user(), user()).prop_map(|(a, b)| Op::RemoveFriend(a, b)),
        3 => (user(), users()).prop_map(|(o, m)| Op::CreateGroup(o, m)),
        3 => (who(), conv(), users()).prop_map(|(a, c, u)| Op::AddMembers(a, c, u)),
        3 => (who(), conv(), who()).prop_map(|(a, c, u)| Op::RemoveMember(a, c, u)),
        2 => (who(), conv(), who(), 0u8..3).prop_map(|(a, c, u, r)| Op::SetRole(a, c, u, r)),
        1 => (who(), conv()).prop_map(|(a, c)| Op::Rename(a, c)),
        3 => (who(), conv(), 0u64..10).prop_map(|(u, c, s)| Op::MarkRead(u, c, s)),
        1 => (who(), conv(), any::<bool>()).prop_map(|(u, c, m)| Op::SetMuted(u, c, m)),
    ]
}

fn any_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => write_op(),
        3 => (0u64..6, 0u64..6).prop_map(|(a, b)| Op::Direct(a, b)),
        2 => prop::collection::vec(write_op(), 2..6).prop_map(Op::Group),
        1 => (0u64..7, 0u8..3, 0u64..8, 0usize..5).prop_map(|(c, k, s, l)| Op::Messages(c, k, s, l)),
        1 => (0u64..6, 0u64..10, 0usize..5).prop_map(|(u, a, l)| Op::Events(u, a, l)),
        1 => (0u64..6).prop_map(Op::UserState),
        1 => (0u64..7, 0u64..6, 0usize..4).prop_map(|(c, a, l)| Op::ConvState(c, a, l)),
    ]
}

/// The id of a resolved [`Who`].
fn uid(w: &Who) -> UserId {
    match w {
        Who::Id(u) => UserId(*u),
        other => unreachable!("{other:?} is resolved before the op runs"),
    }
}

/// The id of a resolved [`Conv`].
fn cid(c: &Conv) -> ConversationId {
    match c {
        Conv::Id(c) => ConversationId(*c),
        other => unreachable!("{other:?} is resolved before the op runs"),
    }
}

/// Turns every pick of `op` into a literal id, reading the model's current state.
async fn resolve(model: &MemoryStore, op: &Op) -> Op {
    async fn conv(model: &MemoryStore, c: Conv) -> Conv {
        let mut all = Vec::new();
        // Conversation ids are allocated 1, 2, 3, …
        while let Some(c) = model
            .conversation(ConversationId(all.len() as u64 + 1))
            .await
            .expect("conversation")
        {
            all.push(c);
        }
        let pick = |list: Vec<&Conversation>, n: usize| {
            Conv::Id(list.get(n % list.len().max(1)).map_or(99, |c| c.id.0))
        };
        match c {
            Conv::Id(_) => c,
            Conv::Group(n) => pick(
                all.iter()
                    .filter(|c| c.kind == magpie_core::ConversationKind::Group)
                    .collect(),
                n,
            ),
            Conv::Any(n) => pick(all.iter().collect(), n),
        }
    }
    async fn who(model: &MemoryStore, c: Conv, w: Who) -> Who {
        let c = cid(&c);
        match w {
            Who::Id(_) => w,
            Who::Member(n) => {
                let members = model.members(c, None, 100).await.expect("members");
                match members.get(n % members.len().max(1)) {
                    Some(m) => Who::Id(m.user_id.0),
                    None => Who::Id(6),
                }
            }
            Who::Owner => {
                let owner = model.conversation(c).await.expect("conversation");
                Who::Id(owner.and_then(|c| c.owner).map_or(6, |o| o.0))
            }
        }
    }
    match op {
        Op::Append(items) => {
            let mut out = Vec::new();
            for (c, w, id) in items {
                let c = conv(model, *c).await;
                out.push((c, who(model, c, *w).await, *id));
            }
            Op::Append(out)
        }
        Op::Group(ops) => {
            let mut out = Vec::new();
            for op in ops {
                out.push(Box::pin(resolve(model, op)).await);
            }
            Op::Group(out)
        }
        Op::AnswerPending(n, addressee, accept) => {
            let mut pending = Vec::new();
            for u in 1..7 {
                pending.extend(model.friend_requests(UserId(u)).await.expect("requests").0);
            }
            pending.sort_by_key(|r| r.id);
            match pending.get(n % pending.len().max(1)) {
                Some(r) => {
                    let user = if *addressee { r.to } else { r.from };
                    Op::AnswerFriend(user.0, r.id.0, *accept)
                }
                None => Op::AnswerFriend(1, 99, *accept),
            }
        }
        Op::AddMembers(a, c, users) => {
            let c = conv(model, *c).await;
            Op::AddMembers(who(model, c, *a).await, c, users.clone())
        }
        Op::RemoveMember(a, c, u) => {
            let c = conv(model, *c).await;
            Op::RemoveMember(who(model, c, *a).await, c, who(model, c, *u).await)
        }
        Op::SetRole(a, c, u, r) => {
            let c = conv(model, *c).await;
            Op::SetRole(who(model, c, *a).await, c, who(model, c, *u).await, *r)
        }
        Op::Rename(a, c) => {
            let c = conv(model, *c).await;
            Op::Rename(who(model, c, *a).await, c)
        }
        Op::MarkRead(u, c, s) => {
            let c = conv(model, *c).await;
            Op::MarkRead(who(model, c, *u).await, c, *s)
        }
        Op::SetMuted(u, c, m) => {
            let c = conv(model, *c).await;
            Op::SetMuted(who(model, c, *u).await, c, *m)
        }
        other => other.clone(),
    }
}

/// A message without its timestamp, which legitimately differs between backends.
fn msg(m: &Message) -> String {
    format!(
        "{}/{} from {} [{}] {:?} {:?}",
        m.conversation_id, m.seq, m.sender_id, m.client_msg_id, m.text, m.system
    )
}

/// A friend request without its timestamp.
fn request(r: &FriendRequest) -> String {
    format!("request {} {}->{} {:?}", r.id, r.from, r.to, r.message)
}

/// A conversation without its creation time.
fn conv(c: &Conversation) -> String {
    format!(
        "conv {} {:?} {:?} owner {:?} count {} {:?}",
        c.id, c.kind, c.name, c.owner, c.member_count, c.members
    )
}

fn event(e: &Event) -> String {
    let what = match &e.payload {
        EventPayload::Message(m) => msg(m),
        EventPayload::FriendRequest(r) => request(r),
        // No timestamps in the others.
        other => format!("{other:?}"),
    };
    format!("#{} {what}", e.cursor)
}

/// A conversation list, sorted by id: the backends' orders legitimately differ where they
/// depend on timestamps. Checks the backend's own order is the documented one first.
fn summaries(list: &[ConversationSummary]) -> String {
    let activity = |s: &ConversationSummary| {
        s.last_message
            .as_ref()
            .map_or(s.conversation.created_ms, |m| m.ts_ms)
    };
    assert!(
        list.windows(2)
            .all(|w| (activity(&w[0]), w[0].conversation.id)
                > (activity(&w[1]), w[1].conversation.id)),
        "most recent activity first, then highest id"
    );
    let mut rows: Vec<(ConversationId, String)> = list
        .iter()
        .map(|s| {
            (
                s.conversation.id,
                format!(
                    "{} {:?} last {:?} unread {}",
                    conv(&s.conversation),
                    s.member,
                    s.last_message.as_deref().map(msg),
                    s.unread_count
                ),
            )
        })
        .collect();
    rows.sort();
    rows.into_iter()
        .map(|(_, r)| r)
        .collect::<Vec<_>>()
        .join("; ")
}

fn notice(n: &ConversationNotice) -> String {
    format!("{} @{} {:?}", n.conversation_id, n.last_seq, n.members)
}

fn role(r: u8) -> Role {
    match r {
        0 => Role::Member,
        1 => Role::Admin,
        _ => Role::Owner,
    }
}

fn ids(users: &[u64]) -> Vec<UserId> {
    users.iter().copied().map(UserId).collect()
}

/// Renders a nested result: store error, refusal or value.
fn nested<T, E: std::fmt::Debug>(
    r: Result<Result<T, E>, StoreError>,
    render: impl FnOnce(T) -> String,
) -> String {
    match r {
        Ok(Ok(v)) => render(v),
        Ok(Err(e)) => format!("refused {e:?}"),
        Err(e) => err(&e),
    }
}

/// One user's friends, requests and conversations.
async fn user_state(store: &dyn Store, u: u64) -> String {
    let user = UserId(u);
    let friends = store
        .friends(user)
        .await
        .map(|f| {
            f.iter()
                .map(|f| format!("{}@{}", f.user_id, f.conversation_id))
                .collect::<Vec<_>>()
        })
        .map_err(|e| err(&e));
    let requests = store
        .friend_requests(user)
        .await
        .map(|(i, o)| {
            (
                i.iter().map(request).collect::<Vec<_>>(),
                o.iter().map(request).collect::<Vec<_>>(),
            )
        })
        .map_err(|e| err(&e));
    let convs = store
        .conversations_of(user)
        .await
        .map(|l| summaries(&l))
        .map_err(|e| err(&e));
    let pairs: Vec<String> = {
        let mut v = Vec::new();
        for other in 0..6 {
            if store
                .are_friends(user, UserId(other))
                .await
                .expect("are_friends")
            {
                v.push(other.to_string());
            }
        }
        v
    };
    format!("friends {friends:?} ({pairs:?}) requests {requests:?} convs {convs:?}")
}

/// One conversation: record, last seq, a page of members.
async fn conv_state(store: &dyn Store, c: u64, after: u64, limit: usize) -> String {
    let id = ConversationId(c);
    let record = store
        .conversation(id)
        .await
        .map(|c| c.as_ref().map(conv))
        .map_err(|e| err(&e));
    let last = store.last_seq(id).await.map_err(|e| err(&e));
    let after = (after > 0).then_some(UserId(after));
    let members = store
        .members(id, after, limit)
        .await
        .map(|m| format!("{m:?}"))
        .map_err(|e| err(&e));
    let member = match after {
        Some(u) => format!("{:?}", store.member(id, u).await.map_err(|e| err(&e))),
        None => String::new(),
    };
    format!("{record:?} last {last:?} members {members:?} {member}")
}

fn err(e: &StoreError) -> String {
    format!("{e:?}")
}

/// Runs one op and renders its observable outcome (timestamps left out).
async fn apply(store: &dyn Store, op: &Op, step: usize) -> String {
    match op {
        Op::CreateUser(n) => match store
            .create_user(format!("user{n}"), format!("hash{n}"))
            .await
        {
            Ok(u) => format!("user {} {} {}", u.id, u.username, u.password_hash),
            Err(e) => err(&e),
        },
        Op::CreateDevice(u, t) => match store
            .create_device(UserId(*u), format!("dev{step}"), [*t; 32])
            .await
        {
            Ok(d) => format!("{d:?}"),
            Err(e) => err(&e),
        },
        Op::Revoke(d) => format!(
            "{:?}",
            store.revoke_device(DeviceId(*d)).await.map_err(|e| err(&e))
        ),
        Op::Ack(d, c) => format!(
            "{:?}",
            store
                .ack_cursor(DeviceId(*d), Cursor(*c))
                .await
                .map_err(|e| err(&e))
        ),
        Op::Direct(a, b) => match store.direct_conversation(UserId(*a), UserId(*b)).await {
            Ok(c) => format!("conv {} {:?} {:?}", c.id, c.kind, c.members),
            Err(e) => err(&e),
        },
        Op::Append(items) => {
            let batch = items
                .iter()
                .enumerate()
                .map(|(i, (c, s, id))| {
                    req(
                        cid(c),
                        uid(s),
                        &format!("c{id}"),
                        &format!("step {step}.{i}"),
                    )
                })
                .collect();
            match store.append(batch).await {
                Ok(results) => results
                    .iter()
                    .map(|r| match r {
                        Ok(a) => format!("{} dup={}", msg(&a.message), a.duplicate),
                        Err(e) => format!("{e:?}"),
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
                Err(e) => err(&e),
            }
        }
        Op::Group(ops) => {
            let futs = ops
                .iter()
                .map(|op| Box::pin(apply_write(store, op, step)) as BoxFut<'_>)
                .collect();
            join_in_order(futs).await.join(" | ")
        }
        Op::Messages(c, kind, seq, limit) => {
            let range = match kind {
                0 => MessageRange::After(Seq(*seq)),
                1 => MessageRange::Before(Seq(*seq)),
                _ => MessageRange::Latest,
            };
            match store.messages(ConversationId(*c), range, *limit).await {
                Ok(ms) => ms.iter().map(msg).collect::<Vec<_>>().join("; "),
                Err(e) => err(&e),
            }
        }
        Op::Events(u, after, limit) => match store.events(UserId(*u), Cursor(*after), *limit).await
        {
            Ok(es) => es.iter().map(event).collect::<Vec<_>>().join("; "),
            Err(e) => err(&e),
        },
        Op::RequestFriend(from, to) => nested(
            store
                .request_friend(UserId(*from), UserId(*to), format!("m{step}"))
                .await,
            |r| request(&r),
        ),
        Op::AnswerFriend(user, id, accept) => nested(
            store
                .answer_friend_request(UserId(*user), RequestId(*id), *accept)
                .await,
            |c| format!("{:?}", c.as_ref().map(conv)),
        ),
        Op::RemoveFriend(a, b) => format!(
            "{:?}",
            store
                .remove_friend(UserId(*a), UserId(*b))
                .await
                .map_err(|e| err(&e))
        ),
        Op::CreateGroup(owner, members) => nested(
            store
                .create_group(UserId(*owner), format!("g{step}"), ids(members))
                .await,
            |c| conv(&c),
        ),
        Op::AddMembers(actor, c, users) => nested(
            store.add_members(uid(actor), cid(c), ids(users)).await,
            |m| format!("{:?}", m.as_deref().map(msg)),
        ),
        Op::RemoveMember(actor, c, user) => nested(
            store.remove_member(uid(actor), cid(c), uid(user)).await,
            |ms| ms.iter().map(|m| msg(m)).collect::<Vec<_>>().join("; "),
        ),
        Op::SetRole(actor, c, user, r) => nested(
            store
                .set_role(uid(actor), cid(c), uid(user), role(*r))
                .await,
            |m| msg(&m),
        ),
        Op::Rename(actor, c) => nested(
            store
                .rename_group(uid(actor), cid(c), format!("n{step}"))
                .await,
            |m| msg(&m),
        ),
        Op::MarkRead(user, c, seq) => {
            nested(store.mark_read(uid(user), cid(c), Seq(*seq)).await, |s| {
                s.to_string()
            })
        }
        Op::SetMuted(user, c, muted) => {
            nested(store.set_muted(uid(user), cid(c), *muted).await, |()| {
                "muted".into()
            })
        }
        Op::AnswerPending(..) => unreachable!("resolved before the op runs"),
        Op::UserState(u) => user_state(store, *u).await,
        Op::ConvState(c, after, limit) => conv_state(store, *c, *after, *limit).await,
    }
}

type BoxFut<'a> = Pin<Box<dyn Future<Output = String> + Send + 'a>>;

/// `apply` restricted to writer ops, boxed to break the async recursion of `Op::Group`.
fn apply_write<'a>(store: &'a dyn Store, op: &'a Op, step: usize) -> BoxFut<'a> {
    Box::pin(async move {
        match op {
            Op::Group(_)
            | Op::Direct(..)
            | Op::Messages(..)
            | Op::Events(..)
            | Op::UserState(_)
            | Op::ConvState(..) => {
                unreachable!("not a writer op")
            }
            _ => apply(store, op, step).await,
        }
    })
}

/// Polls every future in list order until all are done (a tiny in-order `join_all`): each
/// writer op enqueues on its first poll, so list order is queue order.
async fn join_in_order(futs: Vec<BoxFut<'_>>) -> Vec<String> {
    let mut futs: Vec<Option<BoxFut<'_>>> = futs.into_iter().map(Some).collect();
    let mut out: Vec<Option<String>> = vec![None; futs.len()];
    std::future::poll_fn(|cx| {
        for (slot, fut) in out.iter_mut().zip(futs.iter_mut()) {
            if let Some(f) = fut {
                if let Poll::Ready(v) = f.as_mut().poll(cx) {
                    *slot = Some(v);
                    *fut = None;
                }
            }
        }
        if futs.iter().all(Option::is_none) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    out.into_iter().map(Option::unwrap_or_default).collect()
}

/// Everything observable, rendered, for a final comparison.
async fn dump(store: &dyn Store) -> Vec<String> {
    let mut out = Vec::new();
    for u in 0..7 {
        out.push(format!(
            "user {u}: {:?}",
            store
                .user_by_id(UserId(u))
                .await
                .map(|u| u.map(|u| (u.username, u.password_hash)))
                .map_err(|e| err(&e))
        ));
        out.push(format!(
            "head {u}: {:?}",
            store.inbox_head(UserId(u)).await.map_err(|e| err(&e))
        ));
        let events = store
            .events(UserId(u), Cursor(0), 200)
            .await
            .expect("events");
        out.push(format!(
            "events {u}: {}",
            events.iter().map(event).collect::<Vec<_>>().join("; ")
        ));
    }
    for n in 0..5 {
        out.push(format!(
            "name {n}: {:?}",
            store
                .user_by_name(&format!("user{n}"))
                .await
                .map(|u| u.map(|u| u.id))
                .map_err(|e| err(&e))
        ));
    }
    for d in 0..7 {
        out.push(format!(
            "device {d}: {:?}",
            store.device(DeviceId(d)).await.map_err(|e| err(&e))
        ));
    }
    for t in 0..4 {
        out.push(format!(
            "token {t}: {:?}",
            store
                .device_by_token([t; 32])
                .await
                .map(|d| d.map(|d| d.id))
                .map_err(|e| err(&e))
        ));
    }
    for u in 0..7 {
        out.push(format!("state {u}: {}", user_state(store, u).await));
    }
    for c in 0..8 {
        out.push(format!("conv {c}: {}", conv_state(store, c, 0, 100).await));
        let ms = store
            .messages(ConversationId(c), MessageRange::Latest, 200)
            .await
            .expect("messages");
        out.push(format!(
            "messages {c}: {}",
            ms.iter().map(msg).collect::<Vec<_>>().join("; ")
        ));
    }
    out
}

fn announced(sink: &RecordingSink) -> Vec<String> {
    sink.events()
        .iter()
        .map(|UserEvent { user_id, event: e }| format!("{user_id}: {}", event(e)))
        .collect()
}

/// Checks the backend's notices against the model's: the model announces one notice per
/// operation, the backend one per commit batch (coalescing the operations of a batch), so the
/// backend's must be a subsequence of the model's, ending the same way for every conversation.
fn same_notices(actual: &[ConversationNotice], model: &[ConversationNotice]) -> Result<(), String> {
    let render = |ns: &[ConversationNotice]| ns.iter().map(notice).collect::<Vec<_>>();
    let (a, m) = (render(actual), render(model));
    let mut rest = m.iter();
    for n in &a {
        if !rest.any(|x| x == n) {
            return Err(format!(
                "notice {n} is not in the model's order: {a:?} vs {m:?}"
            ));
        }
    }
    let last = |ns: &[ConversationNotice]| {
        ns.iter()
            .map(|n| (n.conversation_id, notice(n)))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    if last(actual) != last(model) {
        return Err(format!("the last notices differ: {a:?} vs {m:?}"));
    }
    Ok(())
}

fn run_scenario(ops: &[Op], reopen_at: usize) -> Result<(), TestCaseError> {
    let dir = fresh_db_dir();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let model_sink = RecordingSink::new();
        let model = MemoryStore::with_policy(model_sink.clone(), MODEL_POLICY);
        let sink = RecordingSink::new();
        let mut fjall = Some(open_with(dir.path(), sink.clone(), MODEL_POLICY));
        for (step, op) in ops.iter().enumerate() {
            if step == reopen_at {
                drop(fjall.take());
                fjall = Some(open_with(dir.path(), sink.clone(), MODEL_POLICY));
            }
            let store = fjall.as_ref().expect("open store");
            let op = &resolve(&model, op).await;
            let expected = apply(&model, op, step).await;
            let actual = apply(store, op, step).await;
            prop_assert_eq!(&actual, &expected, "step {}: {:?}", step, op);
        }
        let store = fjall.take().expect("open store");
        prop_assert_eq!(dump(&store).await, dump(&model).await);
        prop_assert_eq!(
            announced(&sink),
            announced(&model_sink),
            "the sinks saw the same events"
        );
        if let Err(why) = same_notices(&sink.notices(), &model_sink.notices()) {
            return Err(TestCaseError::fail(why));
        }
        // And all of it survives one more restart.
        drop(store);
        let store = open_with(dir.path(), sink.clone(), MODEL_POLICY);
        prop_assert_eq!(
            dump(&store).await,
            dump(&model).await,
            "after the final reopen"
        );
        Ok(())
    })
}

/// Found by the property test: two devices share a token hash, the older is revoked, and the
/// token must then authenticate the newer one (MemoryStore's "first unrevoked match" rule).
#[test]
fn shared_token_falls_through_to_the_next_holder() {
    let ops = [
        Op::CreateUser(0),
        Op::Group(vec![Op::CreateDevice(1, 2), Op::CreateUser(0)]),
        Op::Group(vec![Op::CreateUser(1), Op::CreateDevice(1, 2)]),
        Op::Group(vec![Op::Revoke(1), Op::CreateUser(0)]),
        Op::Revoke(2),
    ];
    for reopen_at in 0..=ops.len() {
        run_scenario(&ops, reopen_at).expect("matches the model");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn fjall_matches_the_memory_model(
        ops in prop::collection::vec(any_op(), 8..48),
        reopen in any::<prop::sample::Index>(),
    ) {
        // Every scenario starts with five users and a group of three, so that most ops find
        // what they name.
        let mut all: Vec<Op> = (0..5).map(Op::CreateUser).collect();
        all.push(Op::CreateGroup(1, vec![2, 3]));
        all.extend(ops);
        let reopen_at = reopen.index(all.len() + 1);
        run_scenario(&all, reopen_at)?;
    }
}
