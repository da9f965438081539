//! A 10,000-member group on FjallStore: created in one call (one batch), read fan-out appends
//! that write no inbox events and reuse the writer's cached member list, member paging by
//! range scan, unread counts. Prints its timings (`cargo test -p magpie-store --test
//! large_group -- --nocapture`); the asserted bounds are loose guards against accidental
//! quadratic work, not benchmarks (debug builds on a slow disk must pass them too).

use std::sync::Arc;
use std::time::{Duration, Instant};

use magpie_core::{ClientMsgId, Cursor, EventPayload, Seq, UserId};
use magpie_store::conformance::RecordingSink;
use magpie_store::{AppendRequest, FjallConfig, FjallStore, GroupPolicy, Store};

const MEMBERS: usize = 10_000;
const MESSAGES: u64 = 100;
/// Users are created concurrently in waves this large, so group commit batches them.
const USER_WAVE: usize = 1_000;

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_member_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = RecordingSink::new();
    let config = FjallConfig::new(dir.path());
    assert_eq!(config.policy, GroupPolicy::default());
    assert!(config.policy.members_max as usize >= MEMBERS);
    assert!(!config.policy.writes_fanout(MEMBERS as u32));
    let store = Arc::new(FjallStore::open(config.clone(), sink.clone()).expect("open"));

    // Users straight into the store, with cheap fake hashes.
    let started = Instant::now();
    let mut ids = Vec::with_capacity(MEMBERS);
    for wave in 0..MEMBERS / USER_WAVE {
        let tasks: Vec<_> = (0..USER_WAVE)
            .map(|i| {
                let store = store.clone();
                let name = format!("user{}", wave * USER_WAVE + i);
                tokio::spawn(async move { store.create_user(name, "h".into()).await })
            })
            .collect();
        for task in tasks {
            ids.push(task.await.expect("task").expect("user").id);
        }
    }
    ids.sort_unstable();
    let users_took = started.elapsed();
    let owner = ids[0];

    // One call, one batch: 10,000 member rows, index rows and GroupJoined events.
    let started = Instant::now();
    let group = store
        .create_group(owner, "everyone".into(), ids.clone())
        .await
        .expect("store")
        .expect("group");
    let create_took = started.elapsed();
    assert_eq!(group.member_count as usize, MEMBERS);
    let joined = sink.take();
    assert_eq!(
        joined.len(),
        MEMBERS,
        "one GroupJoined per member, no message events"
    );
    assert!(joined.iter().all(|e| e.event.payload
        == EventPayload::GroupJoined {
            conversation_id: group.id
        }));
    let notices = sink.take_notices();
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0].last_seq, Seq(1));
    assert_eq!(&notices[0].members[..], &ids[..]);

    // 100 appends, one at a time, each its own commit.
    let reader = ids[MEMBERS * 7 / 10 + 3];
    let head = store.inbox_head(reader).await.expect("head");
    assert_eq!(head, Cursor(1));
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..MESSAGES {
        let t = Instant::now();
        let appended = store
            .append(vec![AppendRequest {
                conversation_id: group.id,
                sender_id: owner,
                client_msg_id: ClientMsgId::new(format!("m{i}")).expect("id"),
                text: format!("announcement {i}"),
            }])
            .await
            .expect("append")
            .remove(0)
            .expect("a member may send");
        slowest = slowest.max(t.elapsed());
        assert_eq!(appended.message.seq, Seq(i + 2));
    }
    let appends_took = started.elapsed();
    assert!(
        sink.events().is_empty(),
        "read fan-out writes no inbox events"
    );
    assert_eq!(store.inbox_head(reader).await.expect("head"), head);
    assert_eq!(store.inbox_head(owner).await.expect("head"), Cursor(1));
    let notices = sink.take_notices();
    assert_eq!(
        notices.iter().map(|n| n.last_seq.0).collect::<Vec<_>>(),
        (2..MESSAGES + 2).collect::<Vec<_>>(),
        "one notice per commit"
    );
    assert!(
        notices
            .iter()
            .all(|n| Arc::ptr_eq(&n.members, &notices[0].members)),
        "every append reused the writer's cached member list"
    );

    // The reader's view: 100 unread messages, no events.
    let started = Instant::now();
    let list = store.conversations_of(reader).await.expect("list");
    let list_took = started.elapsed();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].unread_count, MESSAGES);
    assert_eq!(
        list[0].last_message.as_ref().map(|m| m.seq),
        Some(Seq(MESSAGES + 1))
    );
    assert_eq!(
        store.conversations_of(owner).await.expect("list")[0].unread_count,
        0,
        "the sender's own messages are not unread"
    );

    // Paging through the members: 50 range scans of 200.
    let started = Instant::now();
    let mut paged = Vec::with_capacity(MEMBERS);
    let mut after = None;
    loop {
        let page = store.members(group.id, after, 200).await.expect("members");
        let Some(last) = page.last() else { break };
        after = Some(last.user_id);
        paged.extend(page.iter().map(|m| m.user_id));
    }
    let paging_took = started.elapsed();
    assert_eq!(paged, ids);

    // Reading in a read-fan-out group tells the reader's devices, nobody else.
    assert_eq!(
        store
            .mark_read(reader, group.id, Seq(50))
            .await
            .expect("store")
            .expect("member"),
        Seq(50)
    );
    let events = sink.take();
    assert_eq!(events.len(), 1, "a Read event, no receipts");
    assert_eq!(events[0].user_id, reader);
    assert_eq!(
        store.conversations_of(reader).await.expect("list")[0].unread_count,
        MESSAGES + 1 - 50
    );

    // After a restart the writer reloads the member list once, then caches it again.
    store.close();
    drop(store);
    let store = FjallStore::open(config, sink.clone()).expect("reopen");
    let started = Instant::now();
    let first = store
        .append(vec![AppendRequest {
            conversation_id: group.id,
            sender_id: UserId(ids[MEMBERS - 1].0),
            client_msg_id: ClientMsgId::new("after-restart").expect("id"),
            text: "still here".into(),
        }])
        .await
        .expect("append")
        .remove(0)
        .expect("a member may send");
    let reload_took = started.elapsed();
    assert_eq!(first.message.seq, Seq(MESSAGES + 2));
    let notices = sink.take_notices();
    assert_eq!(notices.len(), 1);
    assert_eq!(&notices[0].members[..], &ids[..]);
    assert!(sink.events().is_empty());

    println!(
        "10k group: {MEMBERS} users in {}, create_group in {}, {MESSAGES} appends in {} \
         (mean {}, slowest {}), conversations_of in {}, paging {MEMBERS} members in {}, \
         first append after restart (member list reload) in {}",
        ms(users_took),
        ms(create_took),
        ms(appends_took),
        ms(appends_took / MESSAGES as u32),
        ms(slowest),
        ms(list_took),
        ms(paging_took),
        ms(reload_took),
    );
    assert!(
        create_took < Duration::from_secs(10),
        "create_group of {MEMBERS} took {create_took:?}"
    );
    assert!(
        slowest < Duration::from_secs(2),
        "an append to a {MEMBERS}-member group took {slowest:?}"
    );
}
