use crate::{AbstractTree, Database, KeyspaceCreateOptions, KvSeparationOptions};
use test_log::test;

#[test_log::test]
fn clear_recover_sealed() -> crate::Result<()> {
    use crate::{Database, KeyspaceCreateOptions};

    let folder = tempfile::tempdir()?;

    {
        let db = Database::builder(&folder).open()?;

        let tree = db.keyspace("default", KeyspaceCreateOptions::default)?;
        assert!(tree.is_empty()?);

        tree.insert("a", "a")?;
        assert!(tree.contains_key("a")?);

        tree.clear()?;
        assert!(tree.is_empty()?);

        tree.rotate_memtable_and_wait()?;
        assert!(tree.is_empty()?);
        db.supervisor.journal.get_writer()?.rotate()?;

        tree.insert("b", "a")?;
        assert!(tree.contains_key("b")?);
    }

    {
        let db = Database::builder(&folder).open()?;

        let tree = db.keyspace("default", KeyspaceCreateOptions::default)?;

        assert!(!tree.contains_key("a")?);
        assert!(tree.contains_key("b")?);
    }

    Ok(())
}

// TODO: investigate: flaky on macOS???
#[cfg(feature = "__internal_whitebox")]
#[test]
#[ignore = "restore"]
fn whitebox_db_drop() -> crate::Result<()> {
    use crate::Database;

    {
        let folder = tempfile::tempdir()?;

        assert_eq!(0, crate::drop::load_drop_counter());
        let db = Database::builder(&folder).open()?;
        assert_eq!(5, crate::drop::load_drop_counter());

        drop(db);
        assert_eq!(0, crate::drop::load_drop_counter());
    }

    {
        let folder = tempfile::tempdir()?;

        assert_eq!(0, crate::drop::load_drop_counter());
        let db = Database::builder(&folder).open()?;
        assert_eq!(5, crate::drop::load_drop_counter());

        let tree = db.keyspace("default", Default::default)?;
        assert_eq!(6, crate::drop::load_drop_counter());

        drop(tree);
        drop(db);
        assert_eq!(0, crate::drop::load_drop_counter());
    }

    {
        let folder = tempfile::tempdir()?;

        assert_eq!(0, crate::drop::load_drop_counter());
        let db = Database::builder(&folder).open()?;
        assert_eq!(5, crate::drop::load_drop_counter());

        let _tree = db.keyspace("default", Default::default)?;
        assert_eq!(6, crate::drop::load_drop_counter());

        let _tree2 = db.keyspace("different", Default::default)?;
        assert_eq!(7, crate::drop::load_drop_counter());
    }

    assert_eq!(0, crate::drop::load_drop_counter());

    Ok(())
}

#[cfg(feature = "__internal_whitebox")]
#[test]
#[ignore = "restore"]
fn whitebox_db_drop_2() -> crate::Result<()> {
    use crate::{Database, KeyspaceCreateOptions};

    let folder = tempfile::tempdir()?;

    {
        let db = Database::builder(&folder).open()?;

        let tree = db.keyspace("tree", KeyspaceCreateOptions::default)?;
        let tree2 = db.keyspace("tree1", KeyspaceCreateOptions::default)?;

        tree.insert("a", "a")?;
        tree2.insert("b", "b")?;

        tree.rotate_memtable_and_wait()?;
    }

    assert_eq!(0, crate::drop::load_drop_counter());

    Ok(())
}

#[test]
pub fn test_exotic_keyspace_names() -> crate::Result<()> {
    let folder = tempfile::tempdir()?;
    let db = Database::builder(&folder).open()?;

    for name in ["hello$world", "hello#world", "hello.world", "hello_world"] {
        let tree = db.keyspace(name, KeyspaceCreateOptions::default)?;
        tree.insert("a", "a")?;
        assert_eq!(1, tree.len()?);
    }

    Ok(())
}

#[test]
#[expect(clippy::unwrap_used)]
fn recover_sealed_smoke_test() -> crate::Result<()> {
    let folder = tempfile::tempdir()?;

    for i in 0_u128..3 {
        let db = Database::create_or_recover(Database::builder(folder.path()).into_config())?;

        let tree = db.keyspace("default", KeyspaceCreateOptions::default)?;

        assert_eq!(i, tree.len()?.try_into().unwrap());

        tree.insert(i.to_be_bytes(), i.to_be_bytes())?;
        assert_eq!(i + 1, tree.len()?.try_into().unwrap());

        tree.rotate_memtable_and_wait()?;
    }

    Ok(())
}

#[test]
#[expect(clippy::unwrap_used)]
fn recover_sealed_order() -> crate::Result<()> {
    let folder = tempfile::tempdir()?;

    {
        let db = Database::builder(folder.path())
            .worker_threads_unchecked(0)
            .open()?;

        let tree = db.keyspace("default", KeyspaceCreateOptions::default)?;

        tree.insert("a", "a")?;
        tree.rotate_memtable()?;

        tree.insert("a", "b")?;
        tree.rotate_memtable()?;

        tree.insert("a", "c")?;
        tree.rotate_memtable()?;
    }

    {
        let db = Database::create_or_recover(Database::builder(folder.path()).into_config())?;

        let tree = db.keyspace("default", KeyspaceCreateOptions::default)?;

        assert_eq!(b"c", &*tree.get("a")?.unwrap());
    }

    Ok(())
}

#[test]
#[expect(clippy::unwrap_used)]
fn recover_sealed_blob() -> crate::Result<()> {
    let folder = tempfile::tempdir()?;

    for i in 0_u128..3 {
        let db = Database::create_or_recover(Database::builder(folder.path()).into_config())?;

        let tree = db.keyspace("default", || {
            KeyspaceCreateOptions::default()
                .max_memtable_size(1_000)
                .with_kv_separation(Some(KvSeparationOptions::default()))
        })?;

        assert_eq!(i, tree.len()?.try_into().unwrap());

        tree.insert(i.to_be_bytes(), i.to_be_bytes().repeat(1_024))?;
        assert_eq!(i + 1, tree.len()?.try_into().unwrap());

        tree.rotate_memtable_and_wait()?;
    }

    Ok(())
}

#[test]
#[expect(clippy::unwrap_used)]
fn recover_sealed_pair_1() -> crate::Result<()> {
    let folder = tempfile::tempdir()?;

    for i in 0_u128..3 {
        let db = Database::create_or_recover(Database::builder(folder.path()).into_config())?;

        let tree = db.keyspace("default", || {
            KeyspaceCreateOptions::default().max_memtable_size(1_000)
        })?;
        let tree2 = db.keyspace("default2", || {
            KeyspaceCreateOptions::default()
                .max_memtable_size(1_000)
                .with_kv_separation(Some(KvSeparationOptions::default()))
        })?;

        assert_eq!(i, tree.len()?.try_into().unwrap());
        assert_eq!(i, tree2.len()?.try_into().unwrap());

        let mut batch = db.batch();
        batch.insert(&tree, i.to_be_bytes(), i.to_be_bytes());
        batch.insert(&tree2, i.to_be_bytes(), i.to_be_bytes().repeat(1_024));
        batch.commit()?;

        assert_eq!(i + 1, tree.len()?.try_into().unwrap());
        assert_eq!(i + 1, tree2.len()?.try_into().unwrap());

        tree.rotate_memtable_and_wait()?;
    }

    Ok(())
}

#[test]
fn recover_sealed_partially_flushed_batch() -> crate::Result<()> {
    let folder = tempfile::tempdir()?;

    let unflushed_size = {
        let db = Database::builder(folder.path()).open()?;
        let a = db.keyspace("a", KeyspaceCreateOptions::default)?;
        let b = db.keyspace("b", KeyspaceCreateOptions::default)?;

        let mut batch = db.batch();
        for x in 0_u64..100 {
            batch.insert(&a, x.to_be_bytes(), "a");
            batch.insert(&b, x.to_be_bytes(), "b");
        }
        batch.commit()?;

        a.rotate_memtable_and_wait()?;

        let mut batch = db.batch();
        for x in 100_u64..200 {
            batch.insert(&a, x.to_be_bytes(), "a");
        }
        batch.commit()?;

        db.supervisor.journal.get_writer()?.rotate()?;

        a.tree.active_memtable().size() + b.tree.active_memtable().size()
    };

    {
        let db = Database::builder(folder.path())
            .worker_threads_unchecked(0)
            .open()?;
        let a = db.keyspace("a", KeyspaceCreateOptions::default)?;
        let b = db.keyspace("b", KeyspaceCreateOptions::default)?;

        assert_eq!(unflushed_size, db.write_buffer_size());
        assert_eq!(200, a.len()?);
        assert_eq!(100, b.len()?);
    }

    Ok(())
}

// Regression test for https://github.com/fjall-rs/fjall/issues/328
#[test]
fn delete_keyspace_1() -> crate::Result<()> {
    let folder = tempfile::tempdir()?;

    {
        let db = Database::builder(folder.path()).open()?;
        let _keep = db.keyspace("keep", KeyspaceCreateOptions::default)?;
        let a = db.keyspace("a", KeyspaceCreateOptions::default)?;
        a.insert("stale", "written to a")?;
        db.delete_keyspace(a)?;
    }

    {
        let db = Database::builder(folder.path()).open()?;
        let b = db.keyspace("b", KeyspaceCreateOptions::default)?;
        assert!(b.is_empty()?, "keyspace b should be empty");
    }

    {
        let db = Database::builder(folder.path()).open()?;
        let b = db.keyspace("b", KeyspaceCreateOptions::default)?;
        assert!(b.is_empty()?, "keyspace b should still be empty");
    }

    Ok(())
}

/// Patched (Magpie): with no worker to carry out the requested rotations (all busy, here none
/// at all), the writer seals a memtable that has grown past twice its limit itself, so the
/// sealed-memtable halt can bound memory. Without the patch the active memtable keeps growing.
#[test_log::test]
fn memtable_overshoot_is_sealed_by_the_writer() -> crate::Result<()> {
    const LIMIT_BYTES: u64 = 1024 * 1024;
    const VALUE_BYTES: usize = 16 * 1024;

    let folder = tempfile::tempdir()?;
    let db = Database::builder(&folder).worker_threads_unchecked(0).open()?;
    let tree = db.keyspace("default", || {
        KeyspaceCreateOptions::default().max_memtable_size(LIMIT_BYTES)
    })?;

    // Five times the limit, in batches as Magpie writes: two seals by the writer (at just over
    // two and four times the limit), far from the four sealed memtables that would halt the
    // writer for good with no worker to flush them.
    let value = vec![7u8; VALUE_BYTES];
    let mut largest_active = 0;
    for i in 0u32..(5 * LIMIT_BYTES as u32 / VALUE_BYTES as u32) {
        let mut batch = db.batch();
        batch.insert(&tree, i.to_be_bytes(), value.as_slice());
        batch.commit()?;
        largest_active = largest_active.max(tree.tree.active_memtable().size());
    }

    assert_eq!(2, tree.tree.sealed_memtable_count());
    assert!(
        largest_active <= 2 * LIMIT_BYTES + 2 * VALUE_BYTES as u64,
        "the active memtable grew to {largest_active} bytes"
    );
    // Nothing was lost by sealing: every key reads back.
    for i in 0u32..(5 * LIMIT_BYTES as u32 / VALUE_BYTES as u32) {
        assert!(tree.contains_key(i.to_be_bytes())?, "key {i} missing");
    }
    Ok(())
}

/// Patched (Magpie): memtable rotations and flushes have a thread of their own, so a keyspace
/// is flushed while every compaction worker is busy. Here the only worker is held inside a
/// compaction (by a compaction filter that waits at a gate); before the patch the flush waited
/// behind it in the shared queue.
#[test_log::test]
fn a_flush_completes_while_every_compaction_worker_is_busy() -> crate::Result<()> {
    use lsm_tree::compaction::filter::{CompactionFilter, Context, Factory, ItemAccessor, Verdict};
    use std::sync::{mpsc, Arc, Mutex};
    use std::time::Duration;

    /// Holds the first compaction that reaches it until released.
    struct Gate {
        entered: Mutex<Option<mpsc::Sender<()>>>,
        release: Mutex<mpsc::Receiver<()>>,
    }
    struct Held(Arc<Gate>);
    impl CompactionFilter for Held {
        fn filter_item(&mut self, _: ItemAccessor<'_>, _: &Context) -> lsm_tree::Result<Verdict> {
            let entered = self.0.entered.lock().expect("gate").take();
            if let Some(entered) = entered {
                entered.send(()).ok();
                // Bounded, so that a failing test ends instead of hanging.
                let release = self.0.release.lock().expect("gate");
                release.recv_timeout(Duration::from_secs(30)).ok();
            }
            Ok(Verdict::Keep)
        }
    }
    struct HeldFactory(Arc<Gate>);
    impl Factory for HeldFactory {
        fn name(&self) -> &str {
            "held"
        }
        fn make_filter(&self, _: &Context) -> Box<dyn CompactionFilter> {
            Box::new(Held(self.0.clone()))
        }
    }

    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let gate = Arc::new(Gate {
        entered: Mutex::new(Some(entered_tx)),
        release: Mutex::new(release_rx),
    });

    let folder = tempfile::tempdir()?;
    let db = Database::builder(&folder).worker_threads(1).open()?;
    let held = db.keyspace("held", || {
        KeyspaceCreateOptions::default().with_compaction_filter_factory(Arc::new(HeldFactory(gate.clone())))
    })?;
    // Overlapping level-0 tables until the worker merges them and meets the gate.
    for round in 0u8..8 {
        held.insert("k", [round])?;
        held.rotate_memtable_and_wait()?;
        if entered_rx.recv_timeout(Duration::from_millis(500)).is_ok() {
            break;
        }
        assert!(round < 7, "no compaction reached the gate");
    }

    let other = db.keyspace("other", KeyspaceCreateOptions::default)?;
    other.insert("x", "y")?;
    let (flushed_tx, flushed_rx) = mpsc::channel();
    let flusher = {
        let other = other.clone();
        std::thread::spawn(move || {
            let flushed = other.rotate_memtable_and_wait();
            flushed_tx.send(()).ok();
            flushed
        })
    };
    let flushed_while_held = flushed_rx.recv_timeout(Duration::from_secs(10)).is_ok();
    release_tx.send(()).ok();
    flusher.join().expect("flusher thread")?;

    assert!(flushed_while_held, "the flush waited for the compaction");
    assert_eq!(0, other.tree.sealed_memtable_count());
    assert!(other.contains_key("x")?);
    Ok(())
}

/// Patched (Magpie): a keyspace created with the size-tiered strategy reopens with it and its
/// settings (fjall stores them in its meta keyspace and panicked on an unknown strategy name).
#[test_log::test]
fn a_tiered_keyspace_reopens_with_its_settings() -> crate::Result<()> {
    use crate::compaction::SizeTiered;
    use std::sync::Arc;

    let folder = tempfile::tempdir()?;
    let strategy = SizeTiered::default()
        .with_l0_threshold(5)
        .with_runs_per_level(3)
        .with_table_target_size(12_345_678);
    let expected = lsm_tree::compaction::CompactionStrategy::get_config(&strategy);
    {
        let db = Database::builder(&folder).open()?;
        let tree = db.keyspace("timeline", || {
            KeyspaceCreateOptions::default().compaction_strategy(Arc::new(strategy.clone()))
        })?;
        tree.insert("a", "1")?;
        db.persist(crate::PersistMode::SyncAll)?;
    }
    {
        let db = Database::builder(&folder).open()?;
        // The options given here are ignored for an existing keyspace.
        let tree = db.keyspace("timeline", KeyspaceCreateOptions::default)?;
        let reopened = &tree.config.compaction_strategy;
        assert_eq!(reopened.get_name(), "TieredCompaction");
        assert_eq!(reopened.get_config(), expected);
        assert_eq!(tree.get("a")?.as_deref(), Some(b"1".as_slice()));
    }
    Ok(())
}
