#!/usr/bin/env bash
# Create .venv with the pinned dependencies. Safe to re-run: does nothing when requirements are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
NEEDED_MB=4500  # the installed .venv is about 3.4 GB
version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$version" != "3.11" ]; then
    echo "BraTS Label needs Python 3.11 (found $version at $(command -v "$PYTHON")); set PYTHON=/path/to/python3.11" >&2
    exit 1
fi

if [ ! -x .venv/bin/python ] || [ ! -x .venv/bin/pip ]; then
    # a first setup stopped while the venv was made leaves a python without pip: make it again
    echo "==> creating .venv"
    "$PYTHON" -m venv --clear .venv
fi
stamp=.venv/.requirements.sha256
wanted=$(cat requirements.txt requirements-nodeps.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    free_mb=$(df -Pm . | awk 'NR==2 {print $4}')
    if [ "$free_mb" -lt "$NEEDED_MB" ]; then
        echo "BraTS Label needs about $NEEDED_MB MB free in $(pwd) for its Python packages; only $free_mb MB are free. Free some space and run this again." >&2
        exit 1
    fi
    echo "==> installing Python packages (first time: a few minutes, torch is large)"
    # --no-cache-dir: pip's wheel cache would double the disk this takes
    .venv/bin/pip install --no-cache-dir --progress-bar on -r requirements.txt
    # monailabel's metadata pulls sam2, which builds from source against a second torch; we do not use it
    .venv/bin/pip install --no-cache-dir --no-deps -r requirements-nodeps.txt
    echo "$wanted" > "$stamp"
fi
.venv/bin/python -c "import monailabel, monai, torch; print(f'==> environment ready: monailabel {monailabel.__version__}, monai {monai.__version__}, torch {torch.__version__}')"
