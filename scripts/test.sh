#!/usr/bin/env bash
# Install what the tests need and run the whole suite (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/system_packages.sh  # Orthanc, dicom3tools, dcmtk, docker-compose, Chromium, nginx: the tests use the real ones
# playwright-core drives Debian's Chromium in the OHIF tests (it downloads no browser of its own)
[ -d tests/browser/node_modules/playwright-core ] || npm install --prefix tests/browser --no-audit --no-fund --loglevel=error
# a real OpenID provider (oidc-provider, OpenID Certified) for tests/test_openid_provider.py and the OHIF sign-in test
[ -f tests/oidc/node_modules/oidc-provider/package.json ] && [ -f tests/oidc/node_modules/jose/package.json ] || npm install --prefix tests/oidc --no-audit --no-fund --loglevel=error
# lint, format and types first (settings in pyproject.toml): seconds, and a failure names the line
echo "==> ruff, mypy"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
