#!/usr/bin/env bash
# Set up, generate sample studies, start the server, train a first model and pre-segment a study.
# Options are passed to scripts/demo.py (see --help), e.g. --port 8001.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
