#!/usr/bin/env bash
# Create .venv with the pinned dependencies. Safe to re-run: does nothing when requirements are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$version" != "3.11" ]; then
    echo "BraTS Label needs Python 3.11 (found $version at $(command -v "$PYTHON")); set PYTHON=/path/to/python3.11" >&2
    exit 1
fi

if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.requirements.sha256
wanted=$(cat requirements.txt requirements-nodeps.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    echo "==> installing Python packages (first time: several minutes, torch is large)"
    .venv/bin/pip install --progress-bar on -r requirements.txt
    # monailabel's metadata pulls sam2, which builds from source against a second torch; we do not use it
    .venv/bin/pip install --no-deps -r requirements-nodeps.txt
    echo "$wanted" > "$stamp"
fi
.venv/bin/python -c "import monailabel, monai, torch; print(f'==> environment ready: monailabel {monailabel.__version__}, monai {monai.__version__}, torch {torch.__version__}')"
