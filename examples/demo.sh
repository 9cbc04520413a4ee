#!/usr/bin/env bash
# The demo: install ssjobs into a venv in the checkout (.venv; the machine's Python is left
# alone), start it on a config (default: config_example.toml), push demo jobs, show status,
# stop.
#   bash examples/demo.sh [CONFIG]
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG="${1:-config_example.toml}"
VENV="${SSJOBS_VENV:-$PWD/.venv}"

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "demo: creating the venv $VENV"
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
echo "demo: installing ssjobs into $VENV"
"$PY" -P -m pip install -q --disable-pip-version-check -e '.[server]'
ssjobs() { "$VENV/bin/ssjobs" "$@"; }
ssjobs check -c "$CONFIG"
ssjobs start -c "$CONFIG"
trap 'ssjobs stop -c "$CONFIG"' EXIT
"$PY" -P examples/push_demo.py -c "$CONFIG"
ssjobs status -c "$CONFIG"
