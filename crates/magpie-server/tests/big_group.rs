//! A 10,000-member group end to end: registration over HTTP, creation in one request, read
//! fan-out with notify + pull, membership changes mid-stream, unread counts and receipts.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use magpie_server::testing::TestServer;
use serde_json::json;

const USERS: usize = 10_000;
const SENDERS: usize = 3;
const PER_SENDER: u64 = 100;
const TOTAL: u64 = SENDERS as u64 * PER_SENDER;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_member_group() {
    let s = TestServer::start().await;
    let base = s.base_url();
    let t0 = Instant::now();

    // --- Registration ------------------------------------------------------------------------
    let names: Vec<String> = (0..USERS).map(|i| format!("u{i:05}")).collect();
    let t = Instant::now();
    let ids = register_many(&base, &names, 32).await;
    let t_register = t.elapsed();
    eprintln!(
        "registered {USERS} users over HTTP in {t_register:?} ({:.0}/s)",
        USERS as f64 / t_register.as_secs_f64()
    );
    let newbie = account(&base, "newbie").await;

    // Roles: u00000 owns; u00001..3 send; u00004..8 are online; u00009 gets removed;
    // u00010 never reads.
    let owner = login(&base, &names[0]).await;
    let mut senders = Vec::new();
    for n in &names[1..=SENDERS] {
        senders.push(login(&base, n).await);
    }
    let mut online = Vec::new();
    for n in &names[4..9] {
        online.push(login(&base, n).await);
    }
    let removed = login(&base, &names[9]).await;
    let idle = login(&base, &names[10]).await;

    // --- Creation ----------------------------------------------------------------------------
    let t = Instant::now();
    let (st, v) = post(
        &base,
        &owner.token,
        "/v1/groups",
        json!({"name": "everyone", "member_ids": ids[1..]}),
    )
    .await;
    let t_create = t.elapsed();
    eprintln!("created a {USERS}-member group in {t_create:?}");
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["member_count"], USERS as u64);
    let conv = v["conversation_id"].as_str().unwrap().to_owned();
    let (_, v) = get(&base, &idle.token, &format!("/v1/groups/{conv}")).await;
    assert_eq!(
        (v["member_count"].as_u64(), v["fanout"].as_str()),
        (Some(USERS as u64), Some("read")),
        "{v}"
    );
    // Full: one more does not fit.
    let (st, v) = post(
        &base,
        &owner.token,
        &format!("/v1/groups/{conv}/members"),
        json!({"user_ids": [newbie.user_id]}),
    )
    .await;
    assert_eq!((st, code(&v)), (400, "group_full"), "{v}");
    // Member paging reaches everyone.
    let t = Instant::now();
    let mut after = String::new();
    let mut paged = 0;
    loop {
        let (st, v) = get(
            &base,
            &idle.token,
            &format!("/v1/groups/{conv}/members?limit=1000&after={after}"),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        paged += v["members"].as_array().unwrap().len();
        match v["next_after"].as_str() {
            Some(n) => after = n.to_owned(),
            None => break,
        }
    }
    assert_eq!(paged, USERS);
    eprintln!("paged {USERS} members in {:?}", t.elapsed());

    // --- Online members ----------------------------------------------------------------------
    let mut sockets = Vec::new();
    for a in &online {
        let (mut ws, _) = Ws::connect(&s.ws_url(), &a.token).await;
        ws.sync(0).await;
        // Catch-up: the group_joined event; no message events in read fan-out.
        let e = ws.next_event("group_joined").await;
        assert_eq!(e["conversation_id"], conv.as_str());
        sockets.push(ws);
    }
    let (mut removed_ws, _) = Ws::connect(&s.ws_url(), &removed.token).await;
    removed_ws.sync(0).await;
    let (mut newbie_ws, _) = Ws::connect(&s.ws_url(), &newbie.token).await;
    newbie_ws.sync(0).await;
    newbie_ws.send(json!({"type":"ping"})).await;
    newbie_ws.next_type("pong").await;

    let (target_tx, target_rx) = tokio::sync::watch::channel(0u64);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut observers = Vec::new();
    for ws in sockets {
        observers.push(tokio::spawn(observe(
            ws,
            conv.clone(),
            1,
            target_rx.clone(),
            deadline,
        )));
    }

    // --- Sends, with a removal and an addition mid-stream -----------------------------------
    let acked = Arc::new(AtomicU64::new(0));
    let t_send = Instant::now();
    let mut send_tasks = Vec::new();
    for (k, a) in senders.iter().enumerate() {
        let (mut ws, _) = Ws::connect(&s.ws_url(), &a.token).await;
        let (conv, acked) = (conv.clone(), acked.clone());
        send_tasks.push(tokio::spawn(async move {
            const WINDOW: u64 = 8;
            let (mut sent, mut done) = (0u64, 0u64);
            let mut seqs = Vec::new();
            while done < PER_SENDER {
                while sent < PER_SENDER && sent - done < WINDOW {
                    ws.send_text(
                        &conv,
                        &format!("s{k}-{sent}"),
                        &format!("sender {k} message {sent}"),
                    )
                    .await;
                    sent += 1;
                }
                let f = ws
                    .next_where("ack", |f| f["type"] == "sent" || f["type"] == "error")
                    .await;
                assert_eq!(f["type"], "sent", "{f}");
                seqs.push(f["seq"].as_u64().unwrap());
                done += 1;
                acked.fetch_add(1, Ordering::AcqRel);
            }
            seqs
        }));
    }
    let wait_acks = |n: u64| {
        let acked = acked.clone();
        async move {
            let until = Instant::now() + Duration::from_secs(60);
            while acked.load(Ordering::Acquire) < n {
                assert!(
                    Instant::now() < until,
                    "senders stalled at {}",
                    acked.load(Ordering::Acquire)
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };

    wait_acks(TOTAL / 3).await;
    let (st, v) = delete(
        &base,
        &owner.token,
        &format!("/v1/groups/{conv}/members/{}", removed.user_id),
    )
    .await;
    assert_eq!(st, 204, "{v}");
    // Access ends at once: history, pull and send.
    let (st, v) = get(
        &base,
        &removed.token,
        &format!("/v1/conversations/{conv}/messages"),
    )
    .await;
    assert_eq!(
        (st, code(&v)),
        (403, "forbidden"),
        "history after removal: {v}"
    );
    let e = removed_ws.pull(&conv, 0, 50).await;
    assert_eq!(
        (
            e["type"].as_str(),
            e["code"].as_str(),
            e["conversation_id"].as_str()
        ),
        (Some("error"), Some("forbidden"), Some(conv.as_str())),
        "pull after removal names the conversation: {e}"
    );
    let (st, v) = send_http(&base, &removed.token, &conv, "late", "am I still here?").await;
    assert_eq!(
        (st, code(&v)),
        (403, "forbidden"),
        "send after removal: {v}"
    );

    let (_, v) = get(&base, &removed.token, "/v1/conversations").await;
    assert_eq!(
        v["conversations"],
        json!([]),
        "a removed member's list drops the group: {v}"
    );

    wait_acks(2 * TOTAL / 3).await;
    let (st, v) = post(
        &base,
        &owner.token,
        &format!("/v1/groups/{conv}/members"),
        json!({"user_ids": [newbie.user_id]}),
    )
    .await;
    assert_eq!(
        (st, v["member_count"].as_u64(), v["fanout"].as_str()),
        (200, Some(USERS as u64), Some("read")),
        "{v}"
    );
    let e = newbie_ws.next_event("group_joined").await;
    assert_eq!(e["conversation_id"], conv.as_str());
    let (_, v) = get(
        &base,
        &newbie.token,
        &format!(
            "/v1/groups/{conv}/members?after={}&limit=1",
            (newbie.user_id.parse::<u64>().unwrap() - 1)
        ),
    )
    .await;
    assert_eq!(v["members"][0]["user_id"], newbie.user_id.as_str(), "{v}");
    let joined = v["members"][0]["joined_seq"].as_u64().unwrap();
    observers.push(tokio::spawn(observe(
        newbie_ws,
        conv.clone(),
        joined,
        target_rx.clone(),
        deadline,
    )));

    let mut sender_seqs = Vec::new();
    for t in send_tasks {
        sender_seqs.push(t.await.unwrap());
    }
    let t_sends = t_send.elapsed();
    eprintln!("{TOTAL} messages from {SENDERS} senders acked in {t_sends:?}");
    let last = TOTAL + 3; // created, removed, added
    let (_, v) = get(
        &base,
        &owner.token,
        &format!("/v1/conversations/{conv}/messages?limit=1"),
    )
    .await;
    assert_eq!(seqs(&v), vec![last]);
    let mut all_seqs: Vec<u64> = sender_seqs.concat();
    all_seqs.sort_unstable();
    all_seqs.dedup();
    assert_eq!(all_seqs.len() as u64, TOTAL, "every send got its own seq");
    target_tx.send(last).unwrap();

    // --- Every online member has every seq exactly once -------------------------------------
    for (i, o) in observers.into_iter().enumerate() {
        let seen = o.await.unwrap();
        if i < online.len() {
            seen.check(&format!("online member {i}"), 1, last);
            assert_eq!(seen.events, 0, "no message events in read fan-out");
            assert!(seen.notifies > 0);
        } else {
            seen.check("added member", joined, last);
        }
    }
    // History for the added member starts at its join.
    let (_, v) = get(
        &base,
        &newbie.token,
        &format!("/v1/conversations/{conv}/messages?after_seq=0&limit=200"),
    )
    .await;
    assert_eq!(seqs(&v).first().copied(), Some(joined), "{v}");
    assert_eq!(v["messages"][0]["system"]["action"], "members_added");

    // --- Unread counts and receipts ----------------------------------------------------------
    let (_, v) = get(
        &base,
        &owner.token,
        &format!("/v1/conversations/{conv}/messages?after_seq=0&limit=200"),
    )
    .await;
    let removal_seq = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["system"]["action"] == "member_removed")
        .map(|m| m["seq"].as_u64().unwrap())
        .expect("removal in the first 200 messages");
    assert!(removal_seq < joined);
    // The removed member's socket was not notified of anything from its removal on.
    let leaked: Vec<u64> = removed_ws
        .frames_for(200)
        .await
        .iter()
        .filter(|f| f["type"] == "notify")
        .map(|f| f["last_seq"].as_u64().unwrap())
        .filter(|&q| q >= removal_seq)
        .collect();
    assert!(
        leaked.is_empty(),
        "notifies after removal (at {removal_seq}): {leaked:?}"
    );
    let t = Instant::now();
    let (st, v) = get(&base, &idle.token, "/v1/conversations").await;
    eprintln!("conversation list in {:?}", t.elapsed());
    assert_eq!(st, 200, "{v}");
    let row = &v["conversations"][0];
    assert_eq!(
        (
            row["conversation_id"].as_str(),
            row["last_seq"].as_u64(),
            row["read_seq"].as_u64(),
            row["unread_count"].as_u64(),
            row["member_count"].as_u64(),
            row["fanout"].as_str()
        ),
        (
            Some(conv.as_str()),
            Some(last),
            Some(1),
            Some(last - 1),
            Some(USERS as u64),
            Some("read")
        ),
        "a member who never read: {row}"
    );

    // A text message after the removal and before the addition.
    let s_seq = removal_seq + 1;
    let (_, v) = get(
        &base,
        &owner.token,
        &format!(
            "/v1/conversations/{conv}/messages?after_seq={}&limit=1",
            s_seq - 1
        ),
    )
    .await;
    let msg = v["messages"][0].clone();
    assert_eq!(
        (msg["seq"].as_u64(), msg["kind"].as_str()),
        (Some(s_seq), Some("text")),
        "{msg}"
    );
    let reader = &online[0];
    let (st, v) = post(
        &base,
        &reader.token,
        &format!("/v1/conversations/{conv}/read"),
        json!({"seq": s_seq}),
    )
    .await;
    assert_eq!((st, v["read_seq"].as_u64()), (200, Some(s_seq)), "{v}");
    let t = Instant::now();
    let (st, v) = get(
        &base,
        &idle.token,
        &format!("/v1/conversations/{conv}/receipts?seq={s_seq}"),
    )
    .await;
    let t_receipts = t.elapsed();
    eprintln!("receipts over {USERS} members in {t_receipts:?}");
    assert_eq!(st, 200, "{v}");
    // Members at s_seq: everyone but the removed one; the sender is not counted.
    let expect = (USERS - 2) as u64;
    let (read, unread) = (
        v["read"].as_array().unwrap(),
        v["unread"].as_array().unwrap(),
    );
    assert_eq!(
        v["read_count"].as_u64().unwrap() + v["unread_count"].as_u64().unwrap(),
        expect,
        "read {} unread {}",
        v["read_count"],
        v["unread_count"]
    );
    assert_eq!(read.len() as u64, v["read_count"].as_u64().unwrap());
    assert_eq!(unread.len() as u64, v["unread_count"].as_u64().unwrap());
    assert_eq!(
        read,
        &vec![json!(reader.user_id)],
        "only the reader read it"
    );
    let sender = msg["sender_id"].as_str().unwrap();
    for gone in [sender, removed.user_id.as_str(), newbie.user_id.as_str()] {
        assert!(
            !unread.iter().any(|u| u == gone),
            "{gone} must be in neither list"
        );
    }
    let (_, v) = get(&base, &reader.token, "/v1/conversations").await;
    assert_eq!(v["conversations"][0]["unread_count"], last - s_seq, "{v}");

    eprintln!(
        "timings: register {t_register:?}, create {t_create:?}, sends {t_sends:?}, receipts {t_receipts:?}, total {:?}",
        t0.elapsed()
    );
    s.stop().await;
}
