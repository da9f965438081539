//! The engine's background threads run at a lower CPU priority than the threads messages
//! wait for (a patch in `vendor/lsm-tree` and `vendor/fjall`, set by `FjallConfig`).

#![cfg(target_os = "linux")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use magpie_store::{FjallConfig, FjallStore, NoopSink, BACKGROUND_NICE_DEFAULT};

/// Name and nice value from one `/proc/.../stat` line: "tid (name) state ...". The name may
/// hold spaces, so the line is split at the parentheses; the nice value is field 19.
fn name_and_nice(stat: &str) -> (String, i32) {
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        panic!("unexpected stat line: {stat}");
    };
    // After the name come fields 3 (state) onwards.
    let nice = stat[close + 1..]
        .split_whitespace()
        .nth(19 - 3)
        .and_then(|n| n.parse().ok())
        .expect("nice field");
    (stat[open + 1..close].to_owned(), nice)
}

/// Name and nice value of every thread of this process, from `/proc/self/task/*/stat`.
fn threads() -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").expect("list threads") {
        let Ok(stat) = std::fs::read_to_string(entry.expect("thread entry").path().join("stat"))
        else {
            continue; // The thread ended meanwhile.
        };
        out.push(name_and_nice(&stat));
    }
    out
}

/// The nice value of the calling thread.
fn own_nice() -> i32 {
    name_and_nice(&std::fs::read_to_string("/proc/thread-self/stat").expect("own stat")).1
}

#[test]
fn flush_and_compaction_workers_run_at_the_background_nice_value_and_others_do_not() {
    const { assert!(BACKGROUND_NICE_DEFAULT > 0, "a positive nice value lowers") };
    // The test may itself run niced (a background CI job); threads inherit that, and the
    // background value only ever lowers a thread.
    let baseline = own_nice();
    let expected = baseline.max(BACKGROUND_NICE_DEFAULT);
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        FjallStore::open(FjallConfig::for_tests(dir.path()), Arc::new(NoopSink)).expect("open");
    // A new thread runs under its parent's name until it renames itself, and a worker lowers
    // its priority just after that: wait (bounded) until every thread checked here has done
    // both. On timeout the assertions below say what is missing.
    let deadline = Instant::now() + Duration::from_secs(10);
    let all = loop {
        let all = threads();
        let named = |name: &str| all.iter().any(|(n, _)| n == name);
        let settled = ["fjall:worker", "magpie-writer", "magpie-commit"]
            .iter()
            .all(|n| named(n))
            && all
                .iter()
                .all(|(n, nice)| n != "fjall:worker" || *nice == expected);
        if settled || Instant::now() > deadline {
            break all;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let workers: Vec<_> = all.iter().filter(|(n, _)| n == "fjall:worker").collect();
    assert!(!workers.is_empty(), "fjall's workers run: {all:?}");
    for (name, nice) in &workers {
        assert_eq!(*nice, expected, "{name} (test thread at {baseline})");
    }
    for name in ["magpie-writer", "magpie-commit"] {
        let found: Vec<_> = all.iter().filter(|(n, _)| n == name).collect();
        assert_eq!(found.len(), 1, "one {name} thread: {all:?}");
        assert_eq!(
            found[0].1, baseline,
            "{name} keeps the priority it inherited"
        );
    }
    drop(store);
}
