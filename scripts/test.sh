#!/usr/bin/env bash
# Runs Magpie's whole test suite: unit, property, conformance, protocol integration, crash
# tests, and the web client's end-to-end tests in headless Chromium. Everything the tests need
# is installed by the scripts or started by the tests themselves (temp dirs, free ports).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install the Rust toolchain (https://rustup.rs)" >&2
    exit 1
fi

# Many sockets in the protocol tests; lift the soft open-files limit to the hard one.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cargo test --workspace --all-targets "$@"

# The tests of the vendored fjall that cover Magpie's patches there (vendor/README.md): its
# journal tests, the writer sealing an overgrown memtable, the flush thread and the stored
# settings of the size-tiered strategy. fjall is not
# a workspace member, so it builds apart, against the vendored lsm-tree.
(
    cd vendor/fjall
    CARGO_TARGET_DIR=../../target/vendor-fjall cargo test --lib \
        --config 'patch.crates-io.lsm-tree.path="../lsm-tree"' -- journal:: memtable_overshoot a_flush_completes tiered
)

# The vendored lsm-tree's own tests, whose memtable (an arena skip list) and background work
# Magpie replaced or patched (vendor/README.md).
(
    cd vendor/lsm-tree
    CARGO_TARGET_DIR=../../target/vendor-lsm cargo test --lib
)

# The web client in real headless Chromium (installs Chromium and playwright-core if missing).
scripts/e2e.sh
