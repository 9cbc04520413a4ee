#!/usr/bin/env bash
# The demo: install ssjobs, start it on a config (default: config_example.toml, which uses
# the Redis on 127.0.0.1:6379), push demo jobs, show status, stop.
#   bash examples/demo.sh [CONFIG]
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG="${1:-config_example.toml}"

python3 -m pip install -q --disable-pip-version-check -e '.[server]'
python3 -m ssjobs check -c "$CONFIG"
python3 -m ssjobs start -c "$CONFIG"
trap 'python3 -m ssjobs stop -c "$CONFIG"' EXIT
python3 examples/push_demo.py -c "$CONFIG"
python3 -m ssjobs status -c "$CONFIG"
