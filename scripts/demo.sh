#!/usr/bin/env bash
# Install, then run the end-to-end demo: train on river's water-flow series, stream the rest
# through a local Kafka-compatible broker (Tansu) and print the alerts. Extra arguments go to
# `streamad demo` (see `streamad demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/streamad demo "$@"
