//! End-to-end tests of the ordered message stream over both fan-out paths: groups that cross
//! the write/read fan-out threshold while messages flow, and members that were offline.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use magpie_sdk::{
    ConversationId, CursorStore, EventBody, FileCursorStore, MemoryCursorStore, SessionEvent,
    UserId, WireSystem,
};
use magpie_server::testing::TestServer;

/// Groups above three members use read fan-out.
async fn small_threshold_server() -> TestServer {
    TestServer::start_with(|c| c.policy.fanout_write_max = 3).await
}

/// The seq at which `member` joined `group` (their first visible message).
async fn joined_seq(viewer: &User, group: ConversationId, member: UserId) -> u64 {
    let page = viewer
        .client
        .group_members(group, None, Some(100))
        .await
        .unwrap();
    page.members
        .iter()
        .find(|m| m.user_id == member)
        .map(|m| m.joined_seq)
        .expect("member listed")
}

#[tokio::test]
async fn group_growing_past_the_threshold_delivers_every_message_once_in_order() {
    let server = small_threshold_server().await;
    let base = server.base_url();
    let mut users = Vec::new();
    for name in ["ann", "ben", "cat", "dan", "eve"] {
        users.push(user(&base, name).await);
    }
    // Friends where the product would expect it (the group itself does not require it).
    for other in &users[1..] {
        befriend(&users[0], other).await;
    }
    let mut sessions = Vec::new();
    for u in &users {
        let (s, mut rx) = start(&u.client, Arc::new(MemoryCursorStore::new()), config());
        connected(&mut rx).await;
        sessions.push((s, rx));
    }
    let (ann, ben, cat, dan, eve) = (&users[0], &users[1], &users[2], &users[3], &users[4]);

    let info = ann
        .client
        .create_group("team", &[ben.id, cat.id])
        .await
        .unwrap();
    let group = info.conversation_id;
    assert_eq!(info.member_count, 3);
    assert_eq!(
        ann.client.group(group).await.unwrap().fanout.as_deref(),
        Some("write")
    );

    // Ben and Cat talk over HTTP while Ann grows the group and talks over her socket.
    let (ben_client, cat_client) = (ben.client.clone(), cat.client.clone());
    let talk = tokio::spawn(async move {
        for i in 0..30 {
            let (client, who) = if i % 2 == 0 {
                (&ben_client, "ben")
            } else {
                (&cat_client, "cat")
            };
            client
                .send_http(group, &format!("{who}-{i}"), &format!("{who} says {i}"))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let ann_session = &sessions[0].0;
    for i in 0..5 {
        ann_session.send(group, format!("ann says {i}")).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(80)).await;
    ann.client
        .add_group_members(group, &[dan.id])
        .await
        .unwrap();
    for i in 5..10 {
        ann_session.send(group, format!("ann says {i}")).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(80)).await;
    let info = ann
        .client
        .add_group_members(group, &[eve.id])
        .await
        .unwrap();
    assert_eq!(info.member_count, 5);
    assert_eq!(info.fanout.as_deref(), Some("read"));
    talk.await.unwrap();
    // Wait for Ann's socket sends to be stored.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ann_session.pending_sends() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "Ann's sends were not acknowledged within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let all = timeline(&ann.client, group).await;
    let last = *all.last().unwrap();
    assert_eq!(
        all,
        (1..=last).collect::<Vec<_>>(),
        "the timeline is gap-free"
    );
    assert_eq!(
        last,
        1 + 30 + 10 + 2,
        "created + 40 texts + 2 membership changes"
    );
    let joined = [
        1,
        1,
        1,
        joined_seq(ann, group, dan.id).await,
        joined_seq(ann, group, eve.id).await,
    ];
    assert!(joined[3] > 1 && joined[4] > joined[3], "{joined:?}");
    for (i, (_, rx)) in sessions.iter_mut().enumerate() {
        let who = &users[i].name;
        let got = collect_until(rx, group, last, who).await;
        let expected: Vec<u64> = (joined[i]..=last).collect();
        assert_eq!(
            got, expected,
            "{who} got each visible message once, in order"
        );
    }

    // System messages read as what happened.
    let history = ann
        .client
        .messages(group, magpie_sdk::HistoryRange::After(0), Some(1))
        .await
        .unwrap()
        .messages;
    assert_eq!(history[0].kind, "system");
    assert!(matches!(
        &history[0].system,
        Some(WireSystem::GroupCreated { name, user_ids, .. }) if name == "team" && user_ids.len() == 3
    ));
    for (s, _) in sessions {
        s.close().await;
    }
    server.stop().await;
}

#[tokio::test]
async fn member_offline_during_read_fanout_messages_catches_up_after_reconnecting() {
    let server = small_threshold_server().await;
    let base = server.base_url();
    let ann = user(&base, "ann").await;
    let ben = user(&base, "ben").await;
    let cat = user(&base, "cat").await;
    let dan = user(&base, "dan").await;
    // Four members: read fan-out from the start.
    let group = ann
        .client
        .create_group("big", &[ben.id, cat.id, dan.id])
        .await
        .unwrap()
        .conversation_id;
    assert_eq!(
        ann.client.group(group).await.unwrap().fanout.as_deref(),
        Some("read")
    );

    // Dan's device talks to the server through a proxy the test can cut.
    let proxy = Cuttable::start(server.addr()).await;
    let dan_client = login_via(&proxy.base_url(), &dan).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FileCursorStore::new(dir.path().join("cursor")));
    let (d, mut d_rx) = start(&dan_client, store.clone(), config());
    connected(&mut d_rx).await;
    for i in 0..2 {
        ann.client
            .send_http(group, &format!("a{i}"), &format!("hello {i}"))
            .await
            .unwrap();
    }
    // The group-created system message, then the two texts (notify + pull).
    assert_eq!(collect_until(&mut d_rx, group, 3, "dan").await, [1, 2, 3]);

    // Offline: the connection drops and cannot come back.
    proxy.go_offline();
    next_where(&mut d_rx, |e| {
        matches!(e, SessionEvent::Disconnected { .. })
    })
    .await;
    for i in 2..7 {
        let who = if i % 2 == 0 { &ben } else { &cat };
        who.client
            .send_http(group, &format!("o{i}"), &format!("while dan is away {i}"))
            .await
            .unwrap();
    }
    // Back online: the catch-up (conversation list + pulls) brings exactly what was missed.
    proxy.go_online();
    connected(&mut d_rx).await;
    assert_eq!(
        collect_until(&mut d_rx, group, 8, "dan").await,
        [4, 5, 6, 7, 8]
    );
    // And live traffic goes on from there.
    ann.client
        .send_http(group, "a9", "welcome back")
        .await
        .unwrap();
    assert_eq!(collect_until(&mut d_rx, group, 9, "dan").await, [9]);

    // A restart (a new session on the same store) while messages were sent: only those.
    d.close().await;
    assert_eq!(store.load_seqs().unwrap(), [(group, 9)]);
    for i in 10..13 {
        ann.client
            .send_http(group, &format!("a{i}"), &format!("later {i}"))
            .await
            .unwrap();
    }
    let (d, mut d_rx) = start(&dan_client, store.clone(), config());
    assert_eq!(
        collect_until(&mut d_rx, group, 12, "dan").await,
        [10, 11, 12]
    );

    // Leaving arrives as a `group_left` event.
    dan.client.remove_group_member(group, dan.id).await.unwrap();
    next_where(
        &mut d_rx,
        |e| matches!(e, SessionEvent::Event(ev) if matches!(ev.body, EventBody::GroupLeft { .. })),
    )
    .await;
    d.close().await;
    server.stop().await;
}
