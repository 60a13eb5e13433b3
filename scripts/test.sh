#!/usr/bin/env bash
# The test suite: unit tests and the end-to-end lab tests (real eBPF, namespaces, agents).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo test --workspace --locked "$@"
