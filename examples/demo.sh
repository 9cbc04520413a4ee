#!/usr/bin/env bash
# The demo: install ssjobs into a venv in the checkout (.venv; the machine's Python is left
# alone), start it on a config (default: config_example.toml), push demo jobs, show status,
# stop. config_example.toml says [redis] url = "embedded": the master runs its own
# redis-server (data in data/process/redis/), so nothing needs to be running; the
# redis-server program is installed with apt when the machine has none.
#   bash examples/demo.sh [CONFIG]
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG="${1:-config_example.toml}"
VENV="${SSJOBS_VENV:-$PWD/.venv}"

if ! command -v redis-server >/dev/null 2>&1; then
    echo "demo: installing redis-server with apt (ssjobs runs it; nothing else uses it)"
    sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    base="$(bash build_scripts/venv_python.sh)"   # the one .ci/run would choose: they share it
    echo "demo: creating the venv $VENV from $base"
    "$base" -m venv "$VENV"
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
