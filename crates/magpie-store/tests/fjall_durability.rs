//! FjallStore across restarts, and against the MemoryStore model on random operation sequences.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use magpie_core::{
    ClientMsgId, ConversationId, Cursor, DeviceId, Event, EventPayload, Message, Seq, UserEvent,
    UserId,
};
use magpie_store::conformance::RecordingSink;
use magpie_store::{
    AppendRequest, Appended, FjallConfig, FjallStore, MemoryStore, MessageRange, NoopSink, Store,
    StoreError,
};
use proptest::prelude::*;

fn open(dir: &Path, sink: Arc<RecordingSink>) -> FjallStore {
    FjallStore::open(FjallConfig::new(dir), sink).expect("open")
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
    let _first = FjallStore::open(FjallConfig::new(dir.path()), Arc::new(NoopSink)).expect("open");
    assert!(FjallStore::open(FjallConfig::new(dir.path()), Arc::new(NoopSink)).is_err());
}

// ---------------------------------------------------------------------------------------------
// Model-based property test: MemoryStore is the model, FjallStore must match it exactly.

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
    Append(Vec<(u64, u64, u8)>),
    /// Writes issued together without waiting, so the writer may fold them into one batch.
    Group(Vec<Op>),
    /// (conversation, range kind, seq, limit).
    Messages(u64, u8, u64, usize),
    /// (user, after, limit).
    Events(u64, u64, usize),
}

/// Ops that go straight to the writer queue on their first poll (no read first), so a group's
/// queue order is its list order and the memory model can replay it sequentially.
fn write_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..5).prop_map(Op::CreateUser),
        1 => (0u64..6, 0u8..4).prop_map(|(u, t)| Op::CreateDevice(u, t)),
        1 => (0u64..5).prop_map(Op::Revoke),
        1 => (0u64..5, 0u64..20).prop_map(|(d, c)| Op::Ack(d, c)),
        5 => prop::collection::vec((0u64..5, 0u64..6, 0u8..6), 1..4).prop_map(Op::Append),
    ]
}

fn any_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => write_op(),
        3 => (0u64..6, 0u64..6).prop_map(|(a, b)| Op::Direct(a, b)),
        2 => prop::collection::vec(write_op(), 2..6).prop_map(Op::Group),
        1 => (0u64..5, 0u8..3, 0u64..8, 0usize..5).prop_map(|(c, k, s, l)| Op::Messages(c, k, s, l)),
        1 => (0u64..6, 0u64..10, 0usize..5).prop_map(|(u, a, l)| Op::Events(u, a, l)),
    ]
}

/// A message without its timestamp, which legitimately differs between backends.
fn msg(m: &Message) -> String {
    format!(
        "{}/{} from {} [{}] {:?}",
        m.conversation_id, m.seq, m.sender_id, m.client_msg_id, m.text
    )
}

fn event(e: &Event) -> String {
    match &e.payload {
        EventPayload::Message(m) => format!("#{} {}", e.cursor, msg(m)),
    }
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
                        ConversationId(*c),
                        UserId(*s),
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
    }
}

type BoxFut<'a> = Pin<Box<dyn Future<Output = String> + Send + 'a>>;

/// `apply` restricted to writer ops, boxed to break the async recursion of `Op::Group`.
fn apply_write<'a>(store: &'a dyn Store, op: &'a Op, step: usize) -> BoxFut<'a> {
    Box::pin(async move {
        match op {
            Op::Group(_) | Op::Direct(..) | Op::Messages(..) | Op::Events(..) => {
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
    for c in 0..6 {
        let conv = store
            .conversation(ConversationId(c))
            .await
            .expect("conversation");
        out.push(format!("conv {c}: {:?}", conv.map(|c| (c.kind, c.members))));
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

fn run_scenario(ops: &[Op], reopen_at: usize) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let model_sink = RecordingSink::new();
        let model = MemoryStore::new(model_sink.clone());
        let sink = RecordingSink::new();
        let mut fjall = Some(open(dir.path(), sink.clone()));
        for (step, op) in ops.iter().enumerate() {
            if step == reopen_at {
                drop(fjall.take());
                fjall = Some(open(dir.path(), sink.clone()));
            }
            let store = fjall.as_ref().expect("open store");
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
        // And all of it survives one more restart.
        drop(store);
        let store = open(dir.path(), sink.clone());
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
        ops in prop::collection::vec(any_op(), 1..48),
        reopen in any::<prop::sample::Index>(),
    ) {
        let reopen_at = reopen.index(ops.len() + 1);
        run_scenario(&ops, reopen_at)?;
    }
}
