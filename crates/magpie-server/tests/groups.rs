//! Groups over real sockets: creation, roles, membership changes as system messages, access
//! after removal, history from the join point, size limits, receipts, read fan-out, and the
//! switch between write and read fan-out while messages flow.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use magpie_server::testing::TestServer;
use serde_json::{json, Value};

/// Creates a group; returns its id and the creation response.
async fn create_group(
    base: &str,
    owner: &Account,
    name: &str,
    members: &[&str],
) -> (String, Value) {
    let (st, v) = post(
        base,
        &owner.token,
        "/v1/groups",
        json!({"name": name, "member_ids": members}),
    )
    .await;
    assert_eq!(st, 201, "create group: {v}");
    (
        v["conversation_id"]
            .as_str()
            .expect("conversation_id")
            .to_owned(),
        v,
    )
}

/// Every message of `conv` readable by `token`, oldest first (up to 200).
async fn timeline(base: &str, token: &str, conv: &str) -> Vec<Value> {
    let (st, v) = get(
        base,
        token,
        &format!("/v1/conversations/{conv}/messages?after_seq=0&limit=200"),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    v["messages"].as_array().unwrap().clone()
}

async fn group_info(base: &str, token: &str, conv: &str) -> Value {
    let (st, v) = get(base, token, &format!("/v1/groups/{conv}")).await;
    assert_eq!(st, 200, "{v}");
    v
}

/// A synced socket whose catch-up is done.
async fn live(s: &TestServer, token: &str) -> Ws {
    let (mut ws, _) = Ws::connect(&s.ws_url(), token).await;
    ws.sync(0).await;
    ws.send(json!({"type":"ping"})).await;
    ws.next_type("pong").await;
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_lifecycle_roles_and_system_messages() {
    let s = TestServer::start().await;
    let base = s.base_url();
    let owner = account(&base, "owner").await;
    let ann = account(&base, "ann").await;
    let ben = account(&base, "ben").await;
    let cat = account(&base, "cat").await;
    let dan = account(&base, "dan").await;
    let mut c_ws = live(&s, &cat.token).await;
    let mut d_ws = live(&s, &dan.token).await;

    let (conv, v) = create_group(&base, &owner, "team", &[&ann.user_id, &ben.user_id]).await;
    assert_eq!(v["kind"], "group", "{v}");
    assert_eq!(v["name"], "team");
    assert_eq!(v["owner_id"], owner.user_id.as_str());
    assert_eq!(v["member_count"], 3);
    let (st, v) = post(
        &base,
        &owner.token,
        "/v1/groups",
        json!({"name": "   ", "member_ids": []}),
    )
    .await;
    assert_eq!((st, code(&v)), (400, "invalid_request"), "blank name: {v}");
    let (st, v) = post(
        &base,
        &owner.token,
        "/v1/groups",
        json!({"name": "x", "member_ids": ["999999"]}),
    )
    .await;
    assert_eq!(st, 400, "unknown member: {v}");

    // Info: members only, with the fan-out mode.
    let v = group_info(&base, &ann.token, &conv).await;
    assert_eq!(
        (
            v["kind"].as_str(),
            v["name"].as_str(),
            v["member_count"].as_u64(),
            v["fanout"].as_str()
        ),
        (Some("group"), Some("team"), Some(3), Some("write")),
        "{v}"
    );
    assert_eq!(v["owner_id"], owner.user_id.as_str());
    let (st, v) = get(&base, &cat.token, &format!("/v1/groups/{conv}")).await;
    assert_eq!((st, code(&v)), (403, "forbidden"), "{v}");
    let (st, _) = get(&base, &cat.token, &format!("/v1/groups/{conv}/members")).await;
    assert_eq!(st, 403);
    let (st, _) = get(
        &base,
        &cat.token,
        &format!("/v1/conversations/{conv}/messages"),
    )
    .await;
    assert_eq!(st, 403);

    // Member paging, ordered by user id.
    let (st, p1) = get(
        &base,
        &ben.token,
        &format!("/v1/groups/{conv}/members?limit=2"),
    )
    .await;
    assert_eq!(st, 200, "{p1}");
    let m = p1["members"].as_array().unwrap();
    assert_eq!(m.len(), 2, "{p1}");
    assert_eq!(m[0]["user_id"], owner.user_id.as_str());
    assert_eq!(m[0]["role"], "owner");
    assert_eq!(m[0]["joined_seq"], 1);
    assert_eq!(m[1]["user_id"], ann.user_id.as_str());
    assert_eq!(m[1]["role"], "member");
    assert_eq!(p1["next_after"], ann.user_id.as_str());
    let (_, p2) = get(
        &base,
        &ben.token,
        &format!("/v1/groups/{conv}/members?after={}&limit=2", ann.user_id),
    )
    .await;
    let m = p2["members"].as_array().unwrap();
    assert_eq!(m.len(), 1, "{p2}");
    assert_eq!(m[0]["user_id"], ben.user_id.as_str());
    assert!(
        p2.get("next_after").is_none_or(|n| n.is_null()),
        "last page: {p2}"
    );
    let (st, _) = get(
        &base,
        &ben.token,
        &format!("/v1/groups/{conv}/members?limit=0"),
    )
    .await;
    assert_eq!(st, 400);

    // seq 2: text.
    let (st, v) = send_http(&base, &ann.token, &conv, "t1", "hello team").await;
    assert_eq!((st, v["seq"].as_u64()), (200, Some(2)), "{v}");
    // seq 3: renamed by the owner.
    let (st, v) = patch(
        &base,
        &owner.token,
        &format!("/v1/groups/{conv}"),
        json!({"name": "crew"}),
    )
    .await;
    assert_eq!((st, v["name"].as_str()), (200, Some("crew")), "{v}");
    // Plain members may not add, rename or change roles.
    let (st, v) = post(
        &base,
        &ann.token,
        &format!("/v1/groups/{conv}/members"),
        json!({"user_ids": [cat.user_id]}),
    )
    .await;
    assert_eq!((st, code(&v)), (403, "forbidden"), "member adding: {v}");
    let (st, _) = patch(
        &base,
        &ann.token,
        &format!("/v1/groups/{conv}"),
        json!({"name": "mine"}),
    )
    .await;
    assert_eq!(st, 403, "member renaming");
    let (st, _) = put(
        &base,
        &ann.token,
        &format!("/v1/groups/{conv}/members/{}", ben.user_id),
        json!({"role": "admin"}),
    )
    .await;
    assert_eq!(st, 403, "member promoting");
    // seq 4: ann becomes admin.
    let (st, v) = put(
        &base,
        &owner.token,
        &format!("/v1/groups/{conv}/members/{}", ann.user_id),
        json!({"role": "admin"}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (
            v["user_id"].as_str(),
            v["role"].as_str(),
            v["joined_seq"].as_u64()
        ),
        (Some(ann.user_id.as_str()), Some("admin"), Some(1)),
        "{v}"
    );
    let (st, _) = put(
        &base,
        &owner.token,
        &format!("/v1/groups/{conv}/members/{}", ben.user_id),
        json!({"role": "owner"}),
    )
    .await;
    assert_eq!(st, 400, "owner is not a settable role");
    // seq 5: the admin adds cat; seq 6: the owner adds dan.
    let (st, v) = post(
        &base,
        &ann.token,
        &format!("/v1/groups/{conv}/members"),
        json!({"user_ids": [cat.user_id]}),
    )
    .await;
    assert_eq!(
        (st, v["member_count"].as_u64(), v["fanout"].as_str()),
        (200, Some(4), Some("write")),
        "{v}"
    );
    let (st, v) = post(
        &base,
        &owner.token,
        &format!("/v1/groups/{conv}/members"),
        json!({"user_ids": [dan.user_id, cat.user_id]}),
    )
    .await;
    assert_eq!(
        (st, v["member_count"].as_u64()),
        (200, Some(5)),
        "existing members are skipped: {v}"
    );
    for (ws, who) in [(&mut c_ws, "cat"), (&mut d_ws, "dan")] {
        let e = ws.next_event("group_joined").await;
        assert_eq!(e["conversation_id"], conv.as_str(), "{who}: {e}");
    }
    // seq 7: dan speaks over the socket; seq 8: ben over HTTP.
    d_ws.send_text(&conv, "d1", "hi all").await;
    let ack = d_ws.send_answer().await;
    assert_sent(&ack, 7);
    let (st, v) = send_http(&base, &ben.token, &conv, "b1", "welcome").await;
    assert_eq!((st, v["seq"].as_u64()), (200, Some(8)), "{v}");
    // Dan's device got the messages since its join as events.
    let e = d_ws
        .next_where("ben's message", |f| {
            f["kind"] == "message" && f["message"]["seq"] == 8
        })
        .await;
    assert_eq!(e["message"]["text"], "welcome");

    // seq 9: the admin removes dan, who loses access at once.
    let (st, v) = delete(
        &base,
        &ann.token,
        &format!("/v1/groups/{conv}/members/{}", dan.user_id),
    )
    .await;
    assert_eq!(st, 204, "{v}");
    let e = d_ws.next_event("group_left").await;
    assert_eq!(e["conversation_id"], conv.as_str(), "{e}");
    let (st, v) = get(
        &base,
        &dan.token,
        &format!("/v1/conversations/{conv}/messages"),
    )
    .await;
    assert_eq!(
        (st, code(&v)),
        (403, "forbidden"),
        "history after removal: {v}"
    );
    let (st, v) = send_http(&base, &dan.token, &conv, "d2", "let me in").await;
    assert_eq!(
        (st, code(&v)),
        (403, "forbidden"),
        "HTTP send after removal: {v}"
    );
    d_ws.send_text(&conv, "d3", "let me in").await;
    let e = d_ws.send_answer().await;
    assert_send_refused(&e, "forbidden", "d3", "WS send after removal");
    // A resend of a message stored before the removal is a duplicate, not a refusal: dan's
    // client must learn that it was delivered (over either path).
    d_ws.send_text(&conv, "d1", "hi all").await;
    let ack = d_ws.send_answer().await;
    assert_duplicate(&ack, "d1", 7);
    let (st, v) = send_http(&base, &dan.token, &conv, "d1", "hi all").await;
    assert_eq!(
        (st, v["seq"].as_u64(), v["duplicate"].as_bool()),
        (200, Some(7), Some(true)),
        "HTTP resend after removal: {v}"
    );
    let e = d_ws.pull(&conv, 0, 50).await;
    assert_eq!(
        (
            e["type"].as_str(),
            e["code"].as_str(),
            e["conversation_id"].as_str()
        ),
        (Some("error"), Some("forbidden"), Some(conv.as_str())),
        "pull after removal names the conversation: {e}"
    );
    let (st, _) = get(&base, &dan.token, &format!("/v1/groups/{conv}")).await;
    assert_eq!(st, 403);
    let (_, v) = get(&base, &dan.token, "/v1/conversations").await;
    assert!(
        v["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["conversation_id"] != conv.as_str()),
        "a removed member's list drops the group: {v}"
    );

    // An admin may not remove the owner; a member may not remove anyone.
    let (st, v) = delete(
        &base,
        &ann.token,
        &format!("/v1/groups/{conv}/members/{}", owner.user_id),
    )
    .await;
    assert_eq!((st, code(&v)), (403, "forbidden"), "{v}");
    let (st, _) = delete(
        &base,
        &ben.token,
        &format!("/v1/groups/{conv}/members/{}", cat.user_id),
    )
    .await;
    assert_eq!(st, 403);

    // seq 10: ben leaves.
    let (st, _) = delete(
        &base,
        &ben.token,
        &format!("/v1/groups/{conv}/members/{}", ben.user_id),
    )
    .await;
    assert_eq!(st, 204);
    // seq 11, 12: the owner leaves; ann (the admin) inherits.
    let (st, _) = delete(
        &base,
        &owner.token,
        &format!("/v1/groups/{conv}/members/{}", owner.user_id),
    )
    .await;
    assert_eq!(st, 204);
    let v = group_info(&base, &ann.token, &conv).await;
    assert_eq!(
        (v["owner_id"].as_str(), v["member_count"].as_u64()),
        (Some(ann.user_id.as_str()), Some(2)),
        "{v}"
    );
    let (_, v) = get(&base, &ann.token, &format!("/v1/groups/{conv}/members")).await;
    let roles: HashMap<String, String> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["user_id"].as_str().unwrap().to_owned(),
                m["role"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(roles.len(), 2, "{v}");
    assert_eq!(roles[&ann.user_id], "owner");
    assert_eq!(roles[&cat.user_id], "member");
    // seq 13: text after all that.
    let (st, v) = send_http(&base, &cat.token, &conv, "c1", "quiet now").await;
    assert_eq!((st, v["seq"].as_u64()), (200, Some(13)), "{v}");

    // Every change is in the timeline, in order between the texts.
    let t = timeline(&base, &ann.token, &conv).await;
    let got: Vec<(u64, String, String)> = t
        .iter()
        .map(|m| {
            (
                m["seq"].as_u64().unwrap(),
                m["kind"].as_str().unwrap().to_owned(),
                m["system"]["action"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let want: Vec<(u64, &str, &str)> = vec![
        (1, "system", "group_created"),
        (2, "text", ""),
        (3, "system", "renamed"),
        (4, "system", "role_changed"),
        (5, "system", "members_added"),
        (6, "system", "members_added"),
        (7, "text", ""),
        (8, "text", ""),
        (9, "system", "member_removed"),
        (10, "system", "member_left"),
        (11, "system", "member_left"),
        (12, "system", "owner_changed"),
        (13, "text", ""),
    ];
    let want: Vec<(u64, String, String)> = want
        .into_iter()
        .map(|(a, b, c)| (a, b.to_owned(), c.to_owned()))
        .collect();
    assert_eq!(got, want, "{t:#?}");
    let sys = |seq: usize| &t[seq - 1]["system"];
    let mut created: Vec<String> = sys(1)["user_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_owned())
        .collect();
    created.sort();
    let mut want_created = vec![
        owner.user_id.clone(),
        ann.user_id.clone(),
        ben.user_id.clone(),
    ];
    want_created.sort();
    assert_eq!(created, want_created);
    assert_eq!(
        (sys(1)["actor_id"].as_str(), sys(1)["name"].as_str()),
        (Some(owner.user_id.as_str()), Some("team"))
    );
    assert_eq!(
        (sys(3)["actor_id"].as_str(), sys(3)["name"].as_str()),
        (Some(owner.user_id.as_str()), Some("crew"))
    );
    assert_eq!(
        (
            sys(4)["actor_id"].as_str(),
            sys(4)["user_id"].as_str(),
            sys(4)["role"].as_str()
        ),
        (
            Some(owner.user_id.as_str()),
            Some(ann.user_id.as_str()),
            Some("admin")
        )
    );
    assert_eq!(
        (sys(5)["actor_id"].as_str(), sys(5)["user_ids"].clone()),
        (Some(ann.user_id.as_str()), json!([cat.user_id]))
    );
    assert_eq!(
        (sys(6)["actor_id"].as_str(), sys(6)["user_ids"].clone()),
        (Some(owner.user_id.as_str()), json!([dan.user_id]))
    );
    assert_eq!(
        (sys(9)["actor_id"].as_str(), sys(9)["user_id"].as_str()),
        (Some(ann.user_id.as_str()), Some(dan.user_id.as_str()))
    );
    assert_eq!(sys(10)["user_id"], ben.user_id.as_str());
    assert_eq!(sys(11)["user_id"], owner.user_id.as_str());
    assert_eq!(sys(12)["user_id"], ann.user_id.as_str());
    assert_eq!(t[1]["text"], "hello team");
    assert_eq!(t[6]["sender_id"], dan.user_id.as_str());
    // Cat joined at seq 5 and reads from there.
    let ct = timeline(&base, &cat.token, &conv).await;
    assert_eq!(
        ct.first().map(|m| m["seq"].as_u64()),
        Some(Some(5)),
        "{ct:#?}"
    );
    assert_eq!(ct.len(), 9);
    // Cat's inbox got the same changes, as message events, from the join on.
    let (_, page) = get(&base, &cat.token, "/v1/sync?cursor=0&limit=200").await;
    let inbox_seqs: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "message" && f["message"]["conversation_id"] == conv.as_str())
        .map(|f| f["message"]["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(inbox_seqs, (5..=13).collect::<Vec<_>>(), "{page}");
    drop(c_ws);
    // Dan's socket got nothing of the group after his removal.
    let leaked: Vec<Value> = d_ws
        .frames_for(200)
        .await
        .into_iter()
        .filter(|f| f["kind"] == "message" && f["message"]["seq"].as_u64() > Some(9))
        .collect();
    assert!(
        leaked.is_empty(),
        "a removed member still gets messages: {leaked:?}"
    );

    // The conversation list shows the group.
    let (_, v) = get(&base, &cat.token, "/v1/conversations").await;
    let row = &v["conversations"][0];
    assert_eq!(
        (
            row["conversation_id"].as_str(),
            row["kind"].as_str(),
            row["name"].as_str(),
            row["member_count"].as_u64(),
            row["fanout"].as_str(),
            row["last_seq"].as_u64()
        ),
        (
            Some(conv.as_str()),
            Some("group"),
            Some("crew"),
            Some(2),
            Some("write"),
            Some(13)
        ),
        "{v}"
    );
    assert!(row.get("peer_id").is_none_or(|p| p.is_null()), "{row}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_reads_from_its_join_and_receipts_count_members() {
    let s = TestServer::start().await;
    let base = s.base_url();
    let owner = account(&base, "owner").await;
    let ann = account(&base, "ann").await;
    let ben = account(&base, "ben").await;
    let lou = account(&base, "lou").await;
    let (conv, _) = create_group(&base, &owner, "g", &[&ann.user_id, &ben.user_id]).await;
    let mut a_ws = live(&s, &ann.token).await;
    let mut o_ws = live(&s, &owner.token).await;
    for i in 0..3 {
        let (st, v) = send_http(
            &base,
            &ann.token,
            &conv,
            &format!("a{i}"),
            &format!("before {i}"),
        )
        .await;
        assert_eq!((st, v["seq"].as_u64()), (200, Some(i + 2)), "{v}");
    }
    // seq 5: lou joins.
    let (st, v) = post(
        &base,
        &owner.token,
        &format!("/v1/groups/{conv}/members"),
        json!({"user_ids": [lou.user_id]}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let (_, v) = get(
        &base,
        &lou.token,
        &format!("/v1/groups/{conv}/members?after={}&limit=1", ben.user_id),
    )
    .await;
    assert_eq!(
        (
            v["members"][0]["user_id"].as_str(),
            v["members"][0]["joined_seq"].as_u64()
        ),
        (Some(lou.user_id.as_str()), Some(5)),
        "{v}"
    );
    let (st, v) = send_http(&base, &ann.token, &conv, "a9", "after").await;
    assert_eq!((st, v["seq"].as_u64()), (200, Some(6)), "{v}");

    for (q, want) in [
        ("", vec![5, 6]),
        ("?after_seq=0", vec![5, 6]),
        ("?after_seq=2&limit=10", vec![5, 6]),
        ("?before_seq=5", vec![]),
        ("?before_seq=7&limit=50", vec![5, 6]),
    ] {
        let (st, v) = get(
            &base,
            &lou.token,
            &format!("/v1/conversations/{conv}/messages{q}"),
        )
        .await;
        assert_eq!((st, seqs(&v)), (200, want), "history{q}: {v}");
    }
    let mut l_ws = live(&s, &lou.token).await;
    let m = l_ws.pull(&conv, 0, 200).await;
    assert_eq!(m["type"], "messages", "{m}");
    assert_eq!(m["conversation_id"], conv.as_str());
    assert_eq!(seqs(&m), vec![5, 6], "pull from before the join: {m}");
    assert_eq!(m["messages"][0]["kind"], "system");
    assert_eq!(m["messages"][0]["system"]["action"], "members_added");
    // Earlier members pull everything.
    let m = a_ws.pull(&conv, 0, 200).await;
    assert_eq!(seqs(&m), (1..=6).collect::<Vec<_>>(), "{m}");
    let m = a_ws.pull(&conv, 3, 2).await;
    assert_eq!(seqs(&m), vec![4, 5], "{m}");
    // Lou's list: unread since the join only.
    let (_, v) = get(&base, &lou.token, "/v1/conversations").await;
    assert_eq!(v["conversations"][0]["unread_count"], 1, "{v}");

    // Typing in a write-fan-out group reaches the other members' sockets, not the typist's.
    a_ws.send(json!({"type":"typing","conversation_id": conv}))
        .await;
    for (who, ws) in [("owner", &mut o_ws), ("lou", &mut l_ws)] {
        let t = ws.next_type("typing").await;
        assert_eq!(
            (t["conversation_id"].as_str(), t["user_id"].as_str()),
            (Some(conv.as_str()), Some(ann.user_id.as_str())),
            "{who}: {t}"
        );
    }
    let echoed = a_ws.frames_for(300).await;
    assert!(echoed.iter().all(|f| f["type"] != "typing"), "{echoed:?}");

    // Receipts for ann's seq 2: ben reads it, the owner does not; lou joined later.
    let (st, v) = post(
        &base,
        &ben.token,
        &format!("/v1/conversations/{conv}/read"),
        json!({"seq": 2}),
    )
    .await;
    assert_eq!((st, v["read_seq"].as_u64()), (200, Some(2)), "{v}");
    for (who, ws) in [("ann", &mut a_ws), ("owner", &mut o_ws)] {
        let r = ws.next_event("receipt").await;
        assert_eq!(
            (
                r["conversation_id"].as_str(),
                r["user_id"].as_str(),
                r["read_seq"].as_u64()
            ),
            (Some(conv.as_str()), Some(ben.user_id.as_str()), Some(2)),
            "{who}: {r}"
        );
    }
    let (st, v) = get(
        &base,
        &ann.token,
        &format!("/v1/conversations/{conv}/receipts?seq=2"),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["seq"], 2);
    assert_eq!(v["read"], json!([ben.user_id]), "{v}");
    assert_eq!(v["unread"], json!([owner.user_id]), "{v}");
    assert_eq!(
        (v["read_count"].as_u64(), v["unread_count"].as_u64()),
        (Some(1), Some(1)),
        "{v}"
    );
    // Seq 6 (after lou joined): lou counts.
    let (_, v) = get(
        &base,
        &owner.token,
        &format!("/v1/conversations/{conv}/receipts?seq=6"),
    )
    .await;
    let mut unread: Vec<String> = v["unread"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_owned())
        .collect();
    unread.sort();
    let mut want = vec![
        owner.user_id.clone(),
        ben.user_id.clone(),
        lou.user_id.clone(),
    ];
    want.sort();
    assert_eq!((unread, v["read_count"].as_u64()), (want, Some(0)), "{v}");
    let (st, _) = get(
        &base,
        &owner.token,
        &format!("/v1/conversations/{conv}/receipts?seq=99"),
    )
    .await;
    assert_eq!(st, 400, "no such message");
    let (st, _) = get(
        &base,
        &"x".repeat(3),
        &format!("/v1/conversations/{conv}/receipts?seq=2"),
    )
    .await;
    assert_eq!(st, 401);
    let outsider = account(&base, "zed").await;
    let (st, _) = get(
        &base,
        &outsider.token,
        &format!("/v1/conversations/{conv}/receipts?seq=2"),
    )
    .await;
    assert_eq!(st, 403);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_are_capped_at_members_max() {
    let s = TestServer::start_with(|c| {
        c.policy.members_max = 5;
        c.policy.fanout_write_max = 5;
    })
    .await;
    let base = s.base_url();
    let owner = account(&base, "owner").await;
    let names: Vec<String> = (0..6).map(|i| format!("user{i}")).collect();
    let ids = register_many(&base, &names, 6).await;
    let idr: Vec<&str> = ids.iter().map(String::as_str).collect();
    let (st, v) = post(
        &base,
        &owner.token,
        "/v1/groups",
        json!({"name": "big", "member_ids": idr[..5]}),
    )
    .await;
    assert_eq!((st, code(&v)), (400, "group_full"), "6 members: {v}");
    let (conv, v) = create_group(&base, &owner, "small", &idr[..3]).await;
    assert_eq!(v["member_count"], 4);
    let (st, v) = post(
        &base,
        &owner.token,
        &format!("/v1/groups/{conv}/members"),
        json!({"user_ids": idr[3..5]}),
    )
    .await;
    assert_eq!((st, code(&v)), (400, "group_full"), "4 + 2: {v}");
    let (st, v) = post(
        &base,
        &owner.token,
        &format!("/v1/groups/{conv}/members"),
        json!({"user_ids": [idr[3]]}),
    )
    .await;
    assert_eq!((st, v["member_count"].as_u64()), (200, Some(5)), "{v}");
    let (st, v) = post(
        &base,
        &owner.token,
        &format!("/v1/groups/{conv}/members"),
        json!({"user_ids": [idr[4]]}),
    )
    .await;
    assert_eq!((st, code(&v)), (400, "group_full"), "{v}");
    // Nothing was written by the refusals.
    let t = timeline(&base, &owner.token, &conv).await;
    assert_eq!(t.len(), 2, "{t:#?}");
    let (_, v) = create_group(&base, &owner, "full", &idr[..4]).await;
    assert_eq!(v["member_count"], 5, "exactly the limit");
    let (_, v) = create_group(
        &base,
        &owner,
        "dups",
        &[&owner.user_id, idr[0], idr[0], idr[1]],
    )
    .await;
    assert_eq!(
        v["member_count"], 3,
        "the owner and repeats count once: {v}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_are_events_in_small_groups_and_queries_in_larger_ones() {
    let s = TestServer::start_with(|c| c.policy.receipt_events_max = 2).await;
    let base = s.base_url();
    let ann = account(&base, "ann").await;
    let ben = account(&base, "ben").await;
    let cat = account(&base, "cat").await;
    let (pair, _) = create_group(&base, &ann, "pair", &[ben.user_id.as_str()]).await;
    let (trio, _) = create_group(
        &base,
        &ann,
        "trio",
        &[ben.user_id.as_str(), cat.user_id.as_str()],
    )
    .await;
    let (_, list) = get(&base, &ann.token, "/v1/conversations").await;
    let row = |conv: &str| {
        list["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["conversation_id"] == conv)
            .cloned()
            .unwrap_or_else(|| panic!("no row for {conv}: {list}"))
    };
    assert_eq!(
        (
            row(&pair)["fanout"].as_str(),
            row(&pair)["receipts"].as_str()
        ),
        (Some("write"), Some("events"))
    );
    assert_eq!(
        (
            row(&trio)["fanout"].as_str(),
            row(&trio)["receipts"].as_str()
        ),
        (Some("write"), Some("query"))
    );

    let mut a_ws = live(&s, &ann.token).await;
    for conv in [&pair, &trio] {
        let (st, v) = send_http(&base, &ann.token, conv, &format!("m-{conv}"), "hi").await;
        assert_eq!((st, v["seq"].as_u64()), (200, Some(2)), "{v}");
        let (st, v) = post(
            &base,
            &ben.token,
            &format!("/v1/conversations/{conv}/read"),
            json!({"seq": 2}),
        )
        .await;
        assert_eq!((st, v["read_seq"].as_u64()), (200, Some(2)), "{v}");
    }
    // One receipt event, from the pair; the trio's read is only in the query.
    let r = a_ws.next_event("receipt").await;
    assert_eq!(
        (r["conversation_id"].as_str(), r["user_id"].as_str()),
        (Some(pair.as_str()), Some(ben.user_id.as_str())),
        "{r}"
    );
    let later = a_ws.frames_for(300).await;
    assert!(later.iter().all(|f| f["kind"] != "receipt"), "{later:?}");
    let (st, v) = get(
        &base,
        &ann.token,
        &format!("/v1/conversations/{trio}/receipts?seq=2"),
    )
    .await;
    assert_eq!((st, &v["read"]), (200, &json!([ben.user_id])), "{v}");
    assert_eq!(v["unread"], json!([cat.user_id]), "{v}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_fanout_notifies_instead_of_events() {
    let s = TestServer::start_with(|c| c.policy.fanout_write_max = 3).await;
    let base = s.base_url();
    let owner = account(&base, "owner").await;
    let mia = account(&base, "mia").await;
    let names: Vec<String> = (0..3).map(|i| format!("quiet{i}")).collect();
    let others = register_many(&base, &names, 3).await;
    let mut m_ws = live(&s, &mia.token).await;
    let mut o_ws = live(&s, &owner.token).await;
    let mut members = vec![mia.user_id.as_str()];
    members.extend(others.iter().map(String::as_str));
    let (conv, v) = create_group(&base, &owner, "wide", &members).await;
    assert_eq!(v["member_count"], 5);
    assert_eq!(group_info(&base, &mia.token, &conv).await["fanout"], "read");
    let e = m_ws.next_event("group_joined").await;
    assert_eq!(e["conversation_id"], conv.as_str());

    // A burst of 200 from the owner.
    const N: u64 = 200;
    let started = Instant::now();
    for i in 0..N {
        o_ws.send_text(&conv, &format!("b{i}"), &format!("burst {i}"))
            .await;
    }
    let (acks, mia_frames) = tokio::join!(
        async {
            let mut acks = Vec::new();
            while acks.len() < N as usize {
                let f = o_ws
                    .next_where("ack", |f| f["type"] == "sent" || f["type"] == "error")
                    .await;
                assert_eq!(f["type"], "sent", "{f}");
                acks.push(f["seq"].as_u64().unwrap());
            }
            acks
        },
        async {
            let mut frames = Vec::new();
            loop {
                let f = m_ws.next().await;
                let done = f["type"] == "notify" && f["last_seq"] == N + 1;
                frames.push(f);
                if done {
                    break;
                }
            }
            frames.extend(m_ws.frames_for(300).await);
            frames
        }
    );
    eprintln!("burst of {N} acked and notified in {:?}", started.elapsed());
    assert_eq!(
        acks,
        (2..=N + 1).collect::<Vec<_>>(),
        "acks in order after the creation message"
    );
    let notifies: Vec<&Value> = mia_frames
        .iter()
        .filter(|f| f["type"] == "notify")
        .collect();
    assert!(
        mia_frames
            .iter()
            .all(|f| !(f["type"] == "event" && f["kind"] == "message")),
        "read fan-out must not put messages in inboxes: {:?}",
        mia_frames
            .iter()
            .filter(|f| f["kind"] == "message")
            .take(3)
            .collect::<Vec<_>>()
    );
    assert!(notifies
        .iter()
        .all(|n| n["conversation_id"] == conv.as_str()));
    let last: Vec<u64> = notifies
        .iter()
        .map(|n| n["last_seq"].as_u64().unwrap())
        .collect();
    assert!(
        last.windows(2).all(|w| w[0] < w[1]),
        "notify seqs only grow: {last:?}"
    );
    eprintln!("{} notify frames for {N} messages", notifies.len());
    assert!(
        notifies.len() < 50,
        "{} notify frames for {N} messages: {last:?}",
        notifies.len()
    );
    assert_eq!(last.last().copied(), Some(N + 1));

    // Pulls give the full, gap-free sequence.
    let mut got = Vec::new();
    let mut after = 0;
    loop {
        let m = m_ws.pull(&conv, after, 200).await;
        assert_eq!(m["type"], "messages", "{m}");
        let page = m["messages"].as_array().unwrap().clone();
        if page.is_empty() {
            break;
        }
        after = page.last().unwrap()["seq"].as_u64().unwrap();
        got.extend(page);
    }
    assert_eq!(
        got.iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        (1..=N + 1).collect::<Vec<_>>()
    );
    assert_eq!(got[0]["system"]["action"], "group_created");
    for (i, m) in got[1..].iter().enumerate() {
        assert_eq!(m["text"], format!("burst {i}"));
        assert_eq!(m["sender_id"], owner.user_id.as_str());
    }
    m_ws.send(json!({"type":"pull","conversation_id": conv,"after_seq": 0}))
        .await;
    let m = m_ws.next_type("messages").await;
    assert_eq!(
        seqs(&m),
        (1..=50).collect::<Vec<_>>(),
        "pull defaults to 50"
    );
    // Typing is not relayed in read fan-out.
    m_ws.send(json!({"type":"typing","conversation_id": conv}))
        .await;
    let frames = o_ws.frames_for(300).await;
    assert!(frames.iter().all(|f| f["type"] != "typing"), "{frames:?}");
    let (_, v) = get(
        &base,
        &mia.token,
        &format!("/v1/conversations/{conv}/messages?after_seq=150&limit=100"),
    )
    .await;
    assert_eq!(seqs(&v), (151..=N + 1).collect::<Vec<_>>());

    // The list still counts unread messages; reads move it and tell only mia's own devices.
    let (_, v) = get(&base, &mia.token, "/v1/conversations").await;
    let row = &v["conversations"][0];
    assert_eq!(
        (
            row["fanout"].as_str(),
            row["last_seq"].as_u64(),
            row["unread_count"].as_u64(),
            row["member_count"].as_u64()
        ),
        (Some("read"), Some(N + 1), Some(N), Some(5)),
        "{v}"
    );
    m_ws.send(json!({"type":"read","conversation_id": conv, "seq": N + 1}))
        .await;
    let r = m_ws.next_event("read").await;
    assert_eq!(r["read_seq"], N + 1, "{r}");
    let (_, v) = get(&base, &mia.token, "/v1/conversations").await;
    assert_eq!(v["conversations"][0]["unread_count"], 0, "{v}");
    let (st, v) = post(
        &base,
        &owner.token,
        &format!("/v1/conversations/{conv}/read"),
        json!({"seq": 100}),
    )
    .await;
    assert_eq!((st, v["read_seq"].as_u64()), (200, Some(100)), "{v}");
    let (st, v) = get(
        &base,
        &owner.token,
        &format!("/v1/conversations/{conv}/receipts?seq={}", N + 1),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["read"], json!([mia.user_id]), "{v}");
    let mut unread: Vec<String> = v["unread"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_owned())
        .collect();
    unread.sort();
    let mut want = others.clone();
    want.sort();
    assert_eq!(unread, want, "{v}");
    assert_eq!(
        (v["read_count"].as_u64(), v["unread_count"].as_u64()),
        (Some(1), Some(3))
    );
    // No receipt events anywhere in read fan-out.
    let owner_frames = o_ws.frames_for(300).await;
    assert!(
        owner_frames.iter().all(|f| f["kind"] != "receipt"),
        "{owner_frames:?}"
    );
    for tok in [&owner.token, &mia.token] {
        let (_, page) = get(&base, tok, "/v1/sync?cursor=0&limit=200").await;
        let events = page["events"].as_array().unwrap();
        assert!(
            events
                .iter()
                .all(|e| e["kind"] != "receipt" && e["kind"] != "message"),
            "{page}"
        );
    }
    s.stop().await;
}

// --- Mode switch -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_switches_both_ways_without_gaps() {
    let s = TestServer::start().await; // the real threshold: write fan-out up to 500 members
    let base = s.base_url();
    let t0 = Instant::now();
    let owner = account(&base, "owner").await;
    let sender = account(&base, "sender").await;
    let mut observers = Vec::new();
    for i in 0..3 {
        observers.push(account(&base, &format!("observer{i}")).await);
    }
    let late = account(&base, "observer3").await;
    let fillers: Vec<String> = (0..494).map(|i| format!("filler{i:03}")).collect();
    let filler_ids = register_many(&base, &fillers, 16).await;
    let extra = register(&base, "extra").await;
    eprintln!("registered 501 users in {:?}", t0.elapsed());

    let mut ids: Vec<&str> = vec![sender.user_id.as_str()];
    ids.extend(observers.iter().map(|o| o.user_id.as_str()));
    ids.extend(filler_ids.iter().map(String::as_str));
    let mut sockets = Vec::new();
    for o in &observers {
        sockets.push(live(&s, &o.token).await);
    }
    let t = Instant::now();
    let (conv, v) = create_group(&base, &owner, "switch", &ids).await;
    eprintln!("created a group of 499 in {:?}", t.elapsed());
    assert_eq!(v["member_count"], 499);
    assert_eq!(
        group_info(&base, &owner.token, &conv).await["fanout"],
        "write"
    );

    let (target_tx, target_rx) = tokio::sync::watch::channel(0u64);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut tasks = Vec::new();
    for ws in sockets {
        tasks.push(tokio::spawn(observe(
            ws,
            conv.clone(),
            1,
            target_rx.clone(),
            deadline,
        )));
    }
    let mut late_ws = live(&s, &late.token).await;

    // The sender keeps a few messages in flight until told to stop.
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender_task = {
        let (acked, stop, conv) = (acked.clone(), stop.clone(), conv.clone());
        let mut ws = live(&s, &sender.token).await;
        tokio::spawn(async move {
            const WINDOW: u64 = 4;
            let (mut sent, mut done, mut last_seq) = (0u64, 0u64, 0u64);
            loop {
                while sent - done < WINDOW && !stop.load(Ordering::Acquire) {
                    ws.send_text(&conv, &format!("m{sent}"), &format!("message {sent}"))
                        .await;
                    sent += 1;
                }
                if sent == done {
                    return (done, last_seq);
                }
                let f = ws
                    .next_where("ack", |f| f["type"] == "sent" || f["type"] == "error")
                    .await;
                assert_eq!(f["type"], "sent", "{f}");
                let seq = f["seq"].as_u64().unwrap();
                assert!(seq > last_seq, "acks in seq order");
                last_seq = seq;
                done += 1;
                acked.store(done, Ordering::Release);
            }
        })
    };
    let wait_acks = |n: u64| {
        let acked = acked.clone();
        async move {
            let until = Instant::now() + Duration::from_secs(30);
            while acked.load(Ordering::Acquire) < n {
                assert!(
                    Instant::now() < until,
                    "sender stalled at {}",
                    acked.load(Ordering::Acquire)
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };

    wait_acks(25).await;
    let (st, v) = post(
        &base,
        &owner.token,
        &format!("/v1/groups/{conv}/members"),
        json!({"user_ids": [late.user_id, extra]}),
    )
    .await;
    assert_eq!(
        (st, v["member_count"].as_u64(), v["fanout"].as_str()),
        (200, Some(501), Some("read")),
        "{v}"
    );
    assert_eq!(
        group_info(&base, &owner.token, &conv).await["fanout"],
        "read"
    );
    let prev = (late.user_id.parse::<u64>().unwrap() - 1).to_string();
    let (_, v) = get(
        &base,
        &owner.token,
        &format!("/v1/groups/{conv}/members?after={prev}&limit=1"),
    )
    .await;
    assert_eq!(v["members"][0]["user_id"], late.user_id.as_str(), "{v}");
    let late_joined = v["members"][0]["joined_seq"].as_u64().unwrap();
    assert!(late_joined > 25, "{v}");
    let e = late_ws.next_event("group_joined").await;
    assert_eq!(e["conversation_id"], conv.as_str());
    tasks.push(tokio::spawn(observe(
        late_ws,
        conv.clone(),
        late_joined,
        target_rx.clone(),
        deadline,
    )));

    wait_acks(55).await;
    for gone in [&extra, &filler_ids[0]] {
        let (st, v) = delete(
            &base,
            &owner.token,
            &format!("/v1/groups/{conv}/members/{gone}"),
        )
        .await;
        assert_eq!(st, 204, "{v}");
    }
    let v = group_info(&base, &owner.token, &conv).await;
    assert_eq!(
        (v["member_count"].as_u64(), v["fanout"].as_str()),
        (Some(499), Some("write")),
        "{v}"
    );

    wait_acks(85).await;
    stop.store(true, Ordering::Release);
    let (n_sent, last_ack) = sender_task.await.unwrap();
    let (_, v) = get(
        &base,
        &owner.token,
        &format!("/v1/conversations/{conv}/messages?limit=1"),
    )
    .await;
    let last = seqs(&v)[0];
    assert_eq!(last, last_ack, "the last message is the sender's");
    eprintln!(
        "{n_sent} messages sent, last seq {last}, after {:?}",
        t0.elapsed()
    );
    target_tx.send(last).unwrap();

    for (i, task) in tasks.into_iter().enumerate() {
        let seen = task.await.unwrap();
        let joined = if i < 3 { 1 } else { late_joined };
        seen.check(&format!("observer {i}"), joined, last);
        assert!(seen.notifies > 0, "observer {i} saw no read fan-out");
        if i < 3 {
            assert!(seen.events > 0, "observer {i} saw no write fan-out");
        }
    }
    // The whole story is in the timeline once.
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let (_, v) = get(
            &base,
            &owner.token,
            &format!("/v1/conversations/{conv}/messages?after_seq={after}&limit=200"),
        )
        .await;
        let page = v["messages"].as_array().unwrap().clone();
        if page.is_empty() {
            break;
        }
        after = page.last().unwrap()["seq"].as_u64().unwrap();
        all.extend(page);
    }
    assert_eq!(all.len() as u64, last);
    let texts = all.iter().filter(|m| m["kind"] == "text").count() as u64;
    assert_eq!(texts, n_sent);
    let actions: Vec<&str> = all
        .iter()
        .filter_map(|m| m["system"]["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        vec![
            "group_created",
            "members_added",
            "member_removed",
            "member_removed"
        ]
    );
    eprintln!("mode switch test took {:?}", t0.elapsed());
    s.stop().await;
}

/// A notice committed after a device connected but before it sent `sync` reaches it once it
/// syncs. Before, only live devices recorded notices, and this one would not learn of the
/// message until the group's next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_before_the_first_sync_is_delivered_after_it() {
    let s = TestServer::start_with(|c| c.policy.fanout_write_max = 1).await;
    let base = s.base_url();
    let owner = account(&base, "owner").await;
    let mia = account(&base, "mia").await;
    let (conv, _) = create_group(&base, &owner, "wide", &[&mia.user_id]).await;
    assert_eq!(group_info(&base, &mia.token, &conv).await["fanout"], "read");
    let mut o_ws = live(&s, &owner.token).await;
    // Connected (registered with the hub) but not synced.
    let (mut m_ws, _) = Ws::connect(&s.ws_url(), &mia.token).await;
    o_ws.send_text(&conv, "n1", "while mia connects").await;
    // The owner's own device is notified by the same pass over the members (its notify may
    // come before or after the ack), so once it has both, the pass has begun; a notice that
    // reaches mia's device after it went live comes the live way, so either way she gets it.
    let (mut seq, mut notified) = (None, false);
    while seq.is_none() || !notified {
        let f = o_ws.next().await;
        match f["type"].as_str() {
            Some("sent") => seq = f["seq"].as_u64(),
            Some("notify") => notified = true,
            Some("error") => panic!("send refused: {f}"),
            _ => {}
        }
    }
    let seq = seq.expect("seq");
    m_ws.sync(0).await;
    let n = m_ws.next_type("notify").await;
    assert_eq!(
        (n["conversation_id"].as_str(), n["last_seq"].as_u64()),
        (Some(conv.as_str()), Some(seq))
    );
    s.stop().await;
}
