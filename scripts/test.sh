#!/usr/bin/env bash
# Runs every test of the workspace: formatting and lints, unit and operator tests, planner
# snapshots, the sqllogictest files and client tests against the real `eddy` binary, and the
# randomized differential test. Installs what the tests need first (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-test-env.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== cargo test"
cargo test --workspace --no-fail-fast "$@"
