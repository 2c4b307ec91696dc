#!/usr/bin/env bash
# Create or reuse the project's virtual environment (.venv) and install the pinned dependencies: the runtime
# (requirements.txt) and the offline toolchain (requirements-train.txt), which the demo and the tests need.
# Sourced by scripts/demo and scripts/test; reinstalls only when requirements.txt or setup.py change.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SEG_NODE_VENV:-$REPO/.venv}"
PYTHON="${PYTHON:-python3}"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "seg_node needs Python >= 3.10 (found: $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.x" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV" || { echo "python3 -m venv failed: on Debian/Ubuntu run 'sudo apt install python3-venv'" >&2; exit 1; }
fi
STAMP="$VENV/.seg_node_installed"
WANT="$(cat "$REPO"/requirements*.txt "$REPO/setup.py" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "installing pinned dependencies into $VENV (first run: a few minutes)"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -r "$REPO/requirements.txt" -r "$REPO/requirements-train.txt"
  # imagecorruptions-imaug declares opencv-python, which clashes with opencv-python-headless: its real
  # dependencies (numba, scikit-image, scipy, Pillow) come from requirements-train.txt
  "$VENV/bin/python" -m pip install --quiet --no-deps imagecorruptions-imaug==1.1.5
  # cityscapesscripts (the Cityscapes label table) declares the PyPI `typing` backport, requests and GUI helpers;
  # only its labels module is imported, which needs none of them
  "$VENV/bin/python" -m pip install --quiet --no-deps cityscapesscripts==2.3.0
  "$VENV/bin/python" -m pip install --quiet --no-deps -e "$REPO"
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
# Keep DDS discovery on this machine unless the user has chosen otherwise.
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
