//! The embedded store while its engine flushes and compacts all the time.
//!
//! Magpie builds fjall and lsm-tree from patched copies (`vendor/`): one change moves
//! compaction's table finishing out from under the version lock, another unlinks old version
//! files on a background thread. With 32 KiB memtables a few thousand messages make the engine
//! rotate, flush and compact hundreds of times while sends and reads run, which is where those
//! changes would lose or hide data if they were wrong. A third change rotates the journal
//! into files zero-filled ahead of time; with 1 MiB journals the same run rotates through
//! several of them.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use magpie_core::{ClientMsgId, ConversationId, Cursor, EventPayload, Seq, UserId};
use magpie_store::{
    AppendRequest, FjallConfig, FjallStore, MessageRange, NoopSink, Store, JOURNAL_BYTES_MIN,
};

/// Conversations written at the same time, one sender each.
const CONVERSATIONS: usize = 8;
/// Messages per conversation.
const MESSAGES_PER_CONVERSATION: u64 = 600;
/// Messages per `append` call.
const BATCH_MESSAGES: u64 = 10;
/// Tiny memtables: every few batches fill one.
const MEMTABLE_BYTES: u64 = 32 * 1024;
/// Page size of the verifying reads.
const PAGE: usize = 200;

fn open(dir: &Path) -> FjallStore {
    let config = FjallConfig {
        memtable_bytes_max: MEMTABLE_BYTES,
        ..FjallConfig::for_tests(dir)
    };
    FjallStore::open(config, Arc::new(NoopSink)).expect("open")
}

/// The text of message `n` of `conv`: long enough to fill memtables quickly, and unique.
fn text(conv: usize, n: u64) -> String {
    format!("conversation {conv} message {n} {}", "x".repeat(200))
}

/// Every message of `conv` in seq order, read in pages.
async fn history(store: &dyn Store, conv: ConversationId) -> Vec<(Seq, String)> {
    let mut out = Vec::new();
    let mut after = Seq(0);
    loop {
        let page = store
            .messages(conv, MessageRange::After(after), PAGE)
            .await
            .expect("read history");
        let Some(last) = page.last() else { break };
        after = last.seq;
        out.extend(page.into_iter().map(|m| (m.seq, m.text)));
    }
    out
}

/// Checks that `conv` holds exactly messages 1..=N with the texts that were sent.
async fn check_conversation(store: &dyn Store, index: usize, conv: ConversationId) {
    let got = history(store, conv).await;
    assert_eq!(
        got.len() as u64,
        MESSAGES_PER_CONVERSATION,
        "conversation {index}"
    );
    for (i, (seq, body)) in got.iter().enumerate() {
        let n = i as u64 + 1;
        assert_eq!(*seq, Seq(n), "conversation {index}: seqs are gap-free");
        assert_eq!(body, &text(index, n), "conversation {index}, seq {n}");
    }
}

/// Checks that `user`'s inbox holds one event per message, cursors 1..=N, in seq order.
async fn check_inbox(store: &dyn Store, user: UserId, conv: ConversationId) {
    let mut after = Cursor(0);
    let mut next_seq = 1;
    loop {
        let page = store.events(user, after, PAGE).await.expect("read inbox");
        let Some(last) = page.last() else { break };
        for event in &page {
            assert_eq!(event.cursor, Cursor(after.0 + 1), "cursors are gap-free");
            after = event.cursor;
            match &event.payload {
                EventPayload::Message(m) => {
                    assert_eq!(m.conversation_id, conv);
                    assert_eq!(m.seq, Seq(next_seq), "inbox follows the timeline");
                    next_seq += 1;
                }
                other => panic!("unexpected event {other:?}"),
            }
        }
        after = last.cursor;
    }
    assert_eq!(next_seq - 1, MESSAGES_PER_CONVERSATION, "inbox of {user:?}");
    assert_eq!(store.inbox_head(user).await.expect("head"), after);
}

/// Every file under `dir`, at any depth.
fn files_under(dir: &Path) -> Vec<std::fs::DirEntry> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir").flatten() {
            if entry.path().is_dir() {
                stack.push(entry.path());
            } else {
                out.push(entry);
            }
        }
    }
    out
}

/// Table files (flushed memtables and compaction output) under the data directory.
fn table_files(dir: &Path) -> usize {
    files_under(dir)
        .iter()
        .filter(|e| {
            e.path()
                .parent()
                .and_then(Path::file_name)
                .is_some_and(|p| p == "tables")
        })
        .count()
}

/// Journal files (`<id>.jnl`) under the data directory: id, length and bytes allocated.
fn journal_files(dir: &Path) -> Vec<(u64, u64, u64)> {
    files_under(dir)
        .iter()
        .filter_map(|entry| {
            let id = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".jnl"))
                .and_then(|n| n.parse::<u64>().ok())?;
            let meta = entry.metadata().ok()?;
            Some((id, meta.len(), meta.blocks() * 512))
        })
        .collect()
}

/// Checks that the journal rotated (the newest journal file has an id of 2 or more: the
/// active journal after at least one rotation, or its spare) and that journals are
/// zero-filled before use: some journal after the first is fully allocated at its full size.
/// With spares disabled, every rotation creates a sparse file and this fails. A spare still
/// being filled is waited for (bounded); the store is idle, so nothing else changes.
async fn check_journals_rotated_into_zeroed_files(dir: &Path) {
    let zeroed = |journals: &[(u64, u64, u64)]| {
        journals
            .iter()
            .any(|&(id, len, allocated)| id >= 1 && len == JOURNAL_BYTES_MIN && allocated >= len)
    };
    let mut journals = journal_files(dir);
    for _ in 0..100 {
        if zeroed(&journals) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        journals = journal_files(dir);
    }
    let newest = journals.iter().map(|j| j.0).max().unwrap_or(0);
    assert!(newest >= 2, "the journal rotated: {journals:?}");
    assert!(zeroed(&journals), "journals are zero-filled: {journals:?}");
}

/// The id of the newest journal file. After a close this is the active journal: a spare
/// that was never used is removed when the journal closes.
fn newest_journal(dir: &Path) -> u64 {
    journal_files(dir)
        .iter()
        .map(|j| j.0)
        .max()
        .expect("a journal")
}

/// Checks that the journal a reopen continues (`id`, cut to its last valid batch by
/// recovery) was filled with zeros to its full size, so that writes after a restart are made
/// in place too.
fn check_reopened_journal_zero_filled(dir: &Path, id: u64) {
    let journals = journal_files(dir);
    let reopened = journals.iter().find(|j| j.0 == id);
    assert!(
        // At least the journal size: its valid data may already run past it (rotation waits
        // for the next flush), and then there is nothing to fill.
        reopened.is_some_and(|&(_, len, allocated)| len >= JOURNAL_BYTES_MIN && allocated >= len),
        "journal {id} was zero-filled after the reopen: {journals:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_and_inboxes_survive_constant_flushes_and_compactions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(open(dir.path()));

    let mut pairs = Vec::new();
    for i in 0..CONVERSATIONS {
        let a = store
            .create_user(format!("a{i}"), "h".into())
            .await
            .expect("user");
        let b = store
            .create_user(format!("b{i}"), "h".into())
            .await
            .expect("user");
        let conv = store.direct_conversation(a.id, b.id).await.expect("direct");
        pairs.push((a.id, b.id, conv.id));
    }

    // Writers: one per conversation, in batches, all at once.
    let mut writers = Vec::new();
    for (index, &(sender, _, conv)) in pairs.iter().enumerate() {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for start in (1..=MESSAGES_PER_CONVERSATION).step_by(BATCH_MESSAGES as usize) {
                let batch = (start..start + BATCH_MESSAGES)
                    .map(|n| AppendRequest {
                        conversation_id: conv,
                        sender_id: sender,
                        client_msg_id: ClientMsgId::new(format!("c{index}-{n}")).expect("id"),
                        text: text(index, n),
                    })
                    .collect();
                let results = store.append(batch).await.expect("append");
                for (k, r) in results.into_iter().enumerate() {
                    let appended = r.expect("accepted");
                    assert_eq!(appended.message.seq, Seq(start + k as u64), "acked seq");
                    assert!(!appended.duplicate);
                }
            }
        }));
    }
    // A reader racing the writers: whatever it sees is a gap-free prefix of what was sent.
    let reader = {
        let store = store.clone();
        let pairs = pairs.clone();
        tokio::spawn(async move {
            for round in 0..20 {
                for (index, &(_, _, conv)) in pairs.iter().enumerate() {
                    let got = history(store.as_ref(), conv).await;
                    for (i, (seq, body)) in got.iter().enumerate() {
                        let n = i as u64 + 1;
                        assert_eq!(*seq, Seq(n), "round {round}: prefix is gap-free");
                        assert_eq!(body, &text(index, n));
                    }
                }
                tokio::task::yield_now().await;
            }
        })
    };
    for w in writers {
        w.await.expect("writer");
    }
    reader.await.expect("reader");

    for (index, &(a, b, conv)) in pairs.iter().enumerate() {
        check_conversation(store.as_ref(), index, conv).await;
        check_inbox(store.as_ref(), a, conv).await;
        check_inbox(store.as_ref(), b, conv).await;
    }
    assert!(
        table_files(dir.path()) > 0,
        "the memtables were flushed to tables (else this test exercises nothing)"
    );

    check_journals_rotated_into_zeroed_files(dir.path()).await;

    // A resend after all that churn is still recognised.
    let (sender, _, conv) = pairs[0];
    let again = store
        .append(vec![AppendRequest {
            conversation_id: conv,
            sender_id: sender,
            client_msg_id: ClientMsgId::new("c0-1").expect("id"),
            text: text(0, 1),
        }])
        .await
        .expect("append");
    let again = again.into_iter().next().expect("one result").expect("ok");
    assert!(again.duplicate);
    assert_eq!(again.message.seq, Seq(1));

    // Everything is there after a reopen, too.
    drop(store);
    let active = newest_journal(dir.path());
    let store = open(dir.path());
    check_reopened_journal_zero_filled(dir.path(), active);
    for (index, &(a, b, conv)) in pairs.iter().enumerate() {
        check_conversation(&store, index, conv).await;
        check_inbox(&store, a, conv).await;
        check_inbox(&store, b, conv).await;
    }

    // Writes after the reopen go to the journal recovery made active (the all-zero spare, cut
    // to nothing, or a partly written journal); they survive another reopen.
    let extra = MESSAGES_PER_CONVERSATION + 1;
    for (index, &(sender, _, conv)) in pairs.iter().enumerate() {
        let appended = store
            .append(vec![AppendRequest {
                conversation_id: conv,
                sender_id: sender,
                client_msg_id: ClientMsgId::new(format!("c{index}-{extra}")).expect("id"),
                text: text(index, extra),
            }])
            .await
            .expect("append")
            .into_iter()
            .next()
            .expect("one result")
            .expect("accepted");
        assert_eq!(appended.message.seq, Seq(extra));
    }
    drop(store);
    let active = newest_journal(dir.path());
    let store = open(dir.path());
    check_reopened_journal_zero_filled(dir.path(), active);
    for (index, &(_, _, conv)) in pairs.iter().enumerate() {
        let got = history(&store, conv).await;
        assert_eq!(
            got.len() as u64,
            extra,
            "conversation {index} after two reopens"
        );
        assert_eq!(got.last(), Some(&(Seq(extra), text(index, extra))));
    }
    store.close();
}
