// Copyright (c) 2024-present, fjall-rs
// This source code is licensed under both the Apache 2.0 and MIT License
// (found in the LICENSE-* files in the repository)

//! Patched (Magpie): a size-tiered compaction strategy. Upstream 3.1.10 ships only a stub of
//! this file (`unimplemented!()`, not compiled).
//!
//! Leveled compaction keeps one sorted run per level and merges into it, which is cheap when
//! new keys fall into a small part of the key space. Magpie's big keyspaces are the opposite:
//! keys are `stream ‖ position`, appended in time order to many streams at once, so every new
//! table overlaps every table of the next level and each merge rewrites that level whole
//! (write amplification of about ten per level). Size-tiered compaction never merges into an
//! existing run: a level collects runs, and when it has enough it merges them all into one new
//! run of the next level. Every byte is then rewritten once per level, at the price of more
//! runs to consult on a read: about `l0_threshold` + `runs_per_level` per deeper level, and
//! a few more where runs keep arriving while a level's merge out is running. At most one merge
//! out of L1 or deeper runs at a time, so that a worker stays free for L0 (see `choose`).
//!
//! # Invariant: newer data sits in shallower levels and earlier runs
//! Point reads take the first version of a key they find, walking levels from L0 down and runs
//! in order, so this must hold after every compaction. It does because
//! - a level is only ever merged *whole* (every table it holds when the merge is chosen) into
//!   the next level, where the result becomes that level's first (newest) run;
//! - at most one merge *out of* a level runs at a time (a level holding hidden tables is
//!   busy), so only one merge at a time writes into any level, and runs that arrive in a level
//!   while its own merge out is in progress are newer than everything that merge moves down;
//! - the last level is merged together with what it already holds, so that its single run is
//!   the oldest data and tombstones may be dropped there (the compaction worker evicts them
//!   only when the destination is the last level).

use super::{Choice, CompactionStrategy, Input as CompactionInput};
use crate::{compaction::state::CompactionState, config::Config, version::Version, KvPair};

#[doc(hidden)]
pub const NAME: &str = "TieredCompaction";

/// Size-tiered compaction strategy (see the module documentation).
#[derive(Clone)]
pub struct Strategy {
    /// Tables in L0 (one per memtable flush) that trigger merging all of L0 into one run of L1.
    l0_threshold: u8,

    /// Runs in a level from L1 on that trigger merging that level into one run of the next.
    runs_per_level: u8,

    /// Target size of each table a merge writes (a run is split into tables of this size).
    target_size: u64,
}

impl Default for Strategy {
    fn default() -> Self {
        Self {
            l0_threshold: 8,
            runs_per_level: 4,
            target_size: /* 64 MiB */ 64 * 1_024 * 1_024,
        }
    }
}

impl Strategy {
    /// Sets how many L0 tables trigger a merge into L1 (at least 2).
    #[must_use]
    pub fn with_l0_threshold(mut self, threshold: u8) -> Self {
        self.l0_threshold = threshold.max(2);
        self
    }

    /// Sets how many runs of a deeper level trigger its merge into the next (at least 2).
    #[must_use]
    pub fn with_runs_per_level(mut self, runs: u8) -> Self {
        self.runs_per_level = runs.max(2);
        self
    }

    /// Sets the target size of the tables a merge writes.
    #[must_use]
    pub fn with_table_target_size(mut self, bytes: u64) -> Self {
        self.target_size = bytes;
        self
    }

    /// Whether level `idx` holds enough to be merged down.
    fn is_due(&self, version: &Version, idx: usize) -> bool {
        version.level(idx).is_some_and(|level| {
            if idx == 0 {
                level.table_count() >= usize::from(self.l0_threshold)
            } else {
                level.run_count() >= usize::from(self.runs_per_level)
            }
        })
    }
}

impl CompactionStrategy for Strategy {
    fn get_name(&self) -> &'static str {
        NAME
    }

    fn get_config(&self) -> Vec<KvPair> {
        vec![
            (
                crate::UserKey::from("tiered_l0_threshold"),
                crate::UserValue::from(self.l0_threshold.to_le_bytes()),
            ),
            (
                crate::UserKey::from("tiered_runs_per_level"),
                crate::UserValue::from(self.runs_per_level.to_le_bytes()),
            ),
            (
                crate::UserKey::from("tiered_target_size"),
                crate::UserValue::from(self.target_size.to_le_bytes()),
            ),
        ]
    }

    fn choose(&self, version: &Version, _: &Config, state: &CompactionState) -> Choice {
        let level_count = version.level_count();
        assert!(level_count >= 2, "tiered compaction needs two levels");
        let last_level = level_count - 1;
        let hidden_set = state.hidden_set();

        // At most one merge out of L1 or deeper at a time. Those merges grow about fourfold
        // per level and cannot be interrupted; with two of them running, every worker of the
        // pool (which all keyspaces share) could be inside one while L0 fills up and fjall
        // stalls writers (from 20 L0 runs on). One deep merge leaves the other lane to L0.
        let deep_merge_running =
            (1..level_count).any(|idx| version.level_is_busy(idx, hidden_set));

        // Shallow levels first: L0 is what holds writers back. A busy level already has its
        // merge out running, so the next worker looks deeper.
        for idx in 0..last_level {
            if !self.is_due(version, idx) || version.level_is_busy(idx, hidden_set) {
                continue;
            }
            if idx > 0 && deep_merge_running {
                break;
            }
            let dest_level = idx + 1;
            if dest_level == last_level && version.level_is_busy(last_level, hidden_set) {
                continue;
            }

            let Some(level) = version.level(idx) else {
                continue;
            };
            let mut table_ids = level.list_ids();
            if dest_level == last_level {
                if let Some(last) = version.level(last_level) {
                    table_ids.extend(last.list_ids());
                }
            }

            #[expect(
                clippy::cast_possible_truncation,
                reason = "level index is bounded by level count (7, technically 255)"
            )]
            return Choice::Merge(CompactionInput {
                table_ids,
                dest_level: dest_level as u8,
                canonical_level: dest_level as u8,
                target_size: self.target_size,
            });
        }

        Choice::DoNothing
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::iter_guard::IterGuard;
    use crate::{AbstractTree, AnyTree, Config, SeqNo, SequenceNumberCounter};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn open(dir: &tempfile::TempDir) -> AnyTree {
        Config::new(
            dir.path(),
            SequenceNumberCounter::default(),
            SequenceNumberCounter::default(),
        )
        .open()
        .unwrap()
    }

    /// Writes one table to L0 whose key range spans everything (as Magpie's interleaved
    /// streams do), so that no two tables are disjoint.
    fn flush_spanning_table(tree: &AnyTree, seqno: &mut SeqNo) {
        for key in ["a", "m", "z"] {
            tree.insert(key, seqno.to_string(), *seqno);
            *seqno += 1;
        }
        tree.flush_active_memtable(0).unwrap();
    }

    fn runs(tree: &AnyTree) -> Vec<usize> {
        let version = tree.current_version();
        (0..version.level_count())
            .map(|idx| version.level(idx).unwrap().run_count())
            .collect()
    }

    #[test]
    fn below_the_l0_threshold_nothing_happens() {
        let dir = tempfile::tempdir().unwrap();
        let tree = open(&dir);
        let mut seqno = 0;
        for _ in 0..3 {
            flush_spanning_table(&tree, &mut seqno);
        }
        let strategy = Arc::new(Strategy::default().with_l0_threshold(4));
        tree.compact(strategy, 0).unwrap();
        assert_eq!(runs(&tree), [3, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn l0_becomes_a_new_run_of_l1_without_rewriting_l1() {
        let dir = tempfile::tempdir().unwrap();
        let tree = open(&dir);
        let mut seqno = 0;
        let strategy = Arc::new(
            Strategy::default()
                .with_l0_threshold(4)
                .with_runs_per_level(3),
        );
        for round in 1..=2 {
            for _ in 0..4 {
                flush_spanning_table(&tree, &mut seqno);
            }
            let l1_before: Vec<_> = tree
                .current_version()
                .level(1)
                .unwrap()
                .list_ids()
                .into_iter()
                .collect();
            tree.compact(strategy.clone(), 0).unwrap();
            assert_eq!(runs(&tree), [0, round, 0, 0, 0, 0, 0]);
            // The tables L1 had are still there, untouched.
            let l1_after = tree.current_version().level(1).unwrap().list_ids();
            assert!(l1_before.iter().all(|id| l1_after.contains(id)));
        }
    }

    #[test]
    fn a_level_with_enough_runs_moves_down_as_one_run() {
        let dir = tempfile::tempdir().unwrap();
        let tree = open(&dir);
        let mut seqno = 0;
        let strategy = Arc::new(
            Strategy::default()
                .with_l0_threshold(2)
                .with_runs_per_level(2),
        );
        for _ in 0..2 {
            flush_spanning_table(&tree, &mut seqno);
            flush_spanning_table(&tree, &mut seqno);
            tree.compact(strategy.clone(), 0).unwrap();
        }
        assert_eq!(runs(&tree), [0, 2, 0, 0, 0, 0, 0]);
        tree.compact(strategy.clone(), 0).unwrap();
        assert_eq!(runs(&tree), [0, 0, 1, 0, 0, 0, 0]);
        tree.compact(strategy, 0).unwrap();
        assert_eq!(runs(&tree), [0, 0, 1, 0, 0, 0, 0], "nothing else is due");
    }

    #[test]
    fn a_busy_level_is_skipped_and_a_deeper_due_level_chosen() {
        let dir = tempfile::tempdir().unwrap();
        let tree = open(&dir);
        let mut seqno = 0;
        let strategy = Strategy::default()
            .with_l0_threshold(2)
            .with_runs_per_level(2);
        for _ in 0..2 {
            flush_spanning_table(&tree, &mut seqno);
            flush_spanning_table(&tree, &mut seqno);
            tree.compact(Arc::new(strategy.clone()), 0).unwrap();
        }
        flush_spanning_table(&tree, &mut seqno);
        flush_spanning_table(&tree, &mut seqno);
        assert_eq!(runs(&tree), [2, 2, 0, 0, 0, 0, 0]);

        let version = tree.current_version();
        let l0 = version.level(0).unwrap().list_ids();
        let l1 = version.level(1).unwrap().list_ids();

        // Nothing in flight: L0 first.
        let state = CompactionState::default();
        let Choice::Merge(input) = strategy.choose(&version, tree.tree_config(), &state) else {
            panic!("L0 is due");
        };
        assert_eq!((input.table_ids, input.dest_level), (l0.clone(), 1));

        // L0's merge in flight: L1 goes down to L2.
        let mut state = CompactionState::default();
        state.hidden_set_mut().hide(l0.iter().copied());
        let Choice::Merge(input) = strategy.choose(&version, tree.tree_config(), &state) else {
            panic!("L1 is due");
        };
        assert_eq!((input.table_ids, input.dest_level), (l1.clone(), 2));

        // Both in flight: nothing, and never a second merge out of a busy level.
        state.hidden_set_mut().hide(l1.iter().copied());
        assert_eq!(
            strategy.choose(&version, tree.tree_config(), &state),
            Choice::DoNothing
        );
    }

    #[test]
    fn only_one_merge_out_of_a_deeper_level_runs_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let tree = open(&dir);
        let mut seqno = 0;
        let strategy = Strategy::default()
            .with_l0_threshold(2)
            .with_runs_per_level(2);
        let two_flushes_then_compact = |tree: &AnyTree, seqno: &mut SeqNo| {
            flush_spanning_table(tree, seqno);
            flush_spanning_table(tree, seqno);
            tree.compact(Arc::new(strategy.clone()), 0).unwrap();
        };
        // Each compaction takes the shallowest due level: this leaves L1 and L2 both due.
        two_flushes_then_compact(&tree, &mut seqno);
        two_flushes_then_compact(&tree, &mut seqno);
        tree.compact(Arc::new(strategy.clone()), 0).unwrap();
        two_flushes_then_compact(&tree, &mut seqno);
        two_flushes_then_compact(&tree, &mut seqno);
        tree.compact(Arc::new(strategy.clone()), 0).unwrap();
        two_flushes_then_compact(&tree, &mut seqno);
        two_flushes_then_compact(&tree, &mut seqno);
        assert_eq!(runs(&tree), [0, 2, 2, 0, 0, 0, 0]);

        let version = tree.current_version();
        let l1 = version.level(1).unwrap().list_ids();
        let l2 = version.level(2).unwrap().list_ids();
        let idle = CompactionState::default();
        let Choice::Merge(input) = strategy.choose(&version, tree.tree_config(), &idle) else {
            panic!("L1 is due");
        };
        assert_eq!((input.table_ids, input.dest_level), (l1.clone(), 2));

        // L2's merge out in flight: L1 is due and idle, but waits.
        let mut state = CompactionState::default();
        state.hidden_set_mut().hide(l2.iter().copied());
        assert_eq!(
            strategy.choose(&version, tree.tree_config(), &state),
            Choice::DoNothing
        );

        // L0 still gets its lane.
        flush_spanning_table(&tree, &mut seqno);
        flush_spanning_table(&tree, &mut seqno);
        let version = tree.current_version();
        let l0 = version.level(0).unwrap().list_ids();
        let Choice::Merge(input) = strategy.choose(&version, tree.tree_config(), &state) else {
            panic!("L0 is due");
        };
        assert_eq!((input.table_ids, input.dest_level), (l0, 1));
    }

    #[test]
    fn the_last_level_is_merged_with_what_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let tree = open(&dir);
        let mut seqno = 0;
        let strategy = Arc::new(
            Strategy::default()
                .with_l0_threshold(2)
                .with_runs_per_level(2),
        );
        // 2^6 L0 tables fill every level once; twice that reaches L6 twice.
        for _ in 0..128 {
            flush_spanning_table(&tree, &mut seqno);
            // One compaction per level at most.
            for _ in 0..6 {
                tree.compact(strategy.clone(), 0).unwrap();
            }
            let last = runs(&tree)[6];
            assert!(last <= 1, "the last level holds one run, not {last}");
        }
        assert_eq!(runs(&tree)[6], 1);
    }

    /// Overwrites and deletes a small key set many times over, compacting after every flush,
    /// and checks after each step that point reads and a full scan return the newest state:
    /// this fails if a merge ever puts older data in front of newer data, or if a tombstone
    /// is dropped while older data below it survives.
    #[test]
    fn reads_see_the_newest_version_through_every_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let tree = open(&dir);
        let strategy = Arc::new(
            Strategy::default()
                .with_l0_threshold(2)
                .with_runs_per_level(2)
                .with_table_target_size(256),
        );
        let mut model = BTreeMap::<Vec<u8>, Vec<u8>>::new();
        let mut seqno: SeqNo = 0;
        let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for round in 0..300u32 {
            for _ in 0..20 {
                let r = next();
                let key = format!("k{:03}", r % 200).into_bytes();
                if r % 7 == 0 {
                    tree.remove(key.clone(), seqno);
                    model.remove(&key);
                } else {
                    let value = format!("{round}-{seqno}").into_bytes();
                    tree.insert(key.clone(), value.clone(), seqno);
                    model.insert(key, value);
                }
                seqno += 1;
            }
            // Spanning keys keep every table overlapping the others.
            tree.insert("a", round.to_string(), seqno);
            model.insert(b"a".to_vec(), round.to_string().into_bytes());
            seqno += 1;
            tree.insert("z", round.to_string(), seqno);
            model.insert(b"z".to_vec(), round.to_string().into_bytes());
            seqno += 1;
            // Everything written so far is below the watermark, so merges drop overwritten
            // versions, and tombstones too where the destination is the last level.
            tree.flush_active_memtable(seqno).unwrap();
            for _ in 0..3 {
                tree.compact(strategy.clone(), seqno).unwrap();
            }

            for k in 0..200u32 {
                let key = format!("k{k:03}").into_bytes();
                let got = tree.get(&key, SeqNo::MAX).unwrap().map(|v| v.to_vec());
                assert_eq!(got.as_ref(), model.get(&key), "round {round} key k{k:03}");
            }
            let scanned: Vec<(Vec<u8>, Vec<u8>)> = tree
                .iter(SeqNo::MAX, None)
                .map(|item| {
                    let (k, v) = item.into_inner().unwrap();
                    (k.to_vec(), v.to_vec())
                })
                .collect();
            let expected: Vec<(Vec<u8>, Vec<u8>)> =
                model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            assert_eq!(scanned, expected, "round {round}");
        }
        // The run went through the deepest level more than once.
        assert!(runs(&tree)[6] == 1, "runs: {:?}", runs(&tree));
    }
}
