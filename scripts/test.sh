#!/usr/bin/env bash
# The whole test suite: Rust unit and integration tests (lapin against the
# real server), then the Python acceptance suite (pika against the built
# binary). Creates .venv for the Python clients on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --bins
cargo test --workspace

if [ ! -x .venv/bin/pytest ]; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
fi
LIEBRE_BIN="$PWD/target/debug/liebre" .venv/bin/pytest tests/python -q -p no:cacheprovider
