#!/usr/bin/env bash
# End-to-end tests of the web client: real `magpie` binaries driven through Debian's headless
# Chromium by Playwright (playwright-core). Installs what they need on a fresh Debian machine
# (Chromium from apt, playwright-core from npm), builds the server and runs `node --test`.
# Screenshots of the main screens land in artifacts/screenshots/.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "e2e: $* missing and not root: install it (apt-get install $*)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if [ -z "${APT_UPDATED:-}" ]; then
        apt-get update
        APT_UPDATED=1
    fi
    apt-get install -y "$@"
}

if [ ! -x /usr/bin/chromium ]; then
    apt_install chromium
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
    echo "e2e: Node.js >= 20 is needed (found $(node --version))" >&2
    exit 1
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "e2e: cargo not found: install the Rust toolchain (https://rustup.rs)" >&2
    exit 1
fi

(
    cd e2e
    if [ -f package-lock.json ]; then
        npm ci --no-audit --no-fund
    else
        npm install --no-audit --no-fund
    fi
)

cargo build -p magpie
mkdir -p artifacts/screenshots

cd e2e
# One file at a time: each starts its own servers and browser, and the machine is small.
node --test --test-concurrency=1 --test-timeout=150000 tests/*.test.js
