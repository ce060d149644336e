#!/usr/bin/env bash
# Install what the tests need and run the whole suite (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/system_packages.sh  # Orthanc, dicom3tools, docker-compose: the tests use the real ones
exec .venv/bin/python -m pytest "$@"
