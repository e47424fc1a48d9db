#!/usr/bin/env bash
# Install, then run the test suite. The Kafka tests start a local Tansu broker unless
# STREAMAD_KAFKA_BOOTSTRAP=HOST:PORT points them at an existing Kafka. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
