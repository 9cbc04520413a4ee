#!/usr/bin/env bash
# Build the one-file binary dist/ssjobs from a clean clone, with one command:
#     build_scripts/build_binary.sh
# Needs a C compiler (the compiled hot loop is part of the binary), and installs what the
# build itself needs (Cython, PyInstaller, the runtime dependencies) with pip when missing.
# The binary runs on Linux machines with this machine's CPU architecture and a glibc at least
# as new as this one's (build on the oldest distribution you deploy to).
#
# Environment: PYTHON (default python3) is the Python that gets embedded;
# SSJOBS_BINARY_ALLOW_PURE=1 builds without the compiled loop when it cannot be compiled.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
started=$(date +%s)

pip_install() {
    "$PYTHON" -m pip install -q --disable-pip-version-check "$@"
}

# 1. What the build needs: the runtime dependencies (and the optional ones the binary
#    carries), Cython for the hot loop, PyInstaller.
"$PYTHON" - <<'PY' || pip_install "redis>=5.0" "msgpack>=1.0" "click>=8.1" "hiredis>=2.0" \
    "rich>=13" "setproctitle>=1.3" "prometheus-client>=0.19" "Cython>=3.0" "pyinstaller>=6.0"
import importlib.util, sys
missing = [m for m in ("redis", "msgpack", "click", "hiredis", "rich", "setproctitle",
                       "prometheus_client", "Cython", "PyInstaller")
           if importlib.util.find_spec(m) is None]
sys.exit(1 if missing else 0)
PY

# 2. The compiled hot loop, built in place next to its source (a no-op when up to date).
"$PYTHON" setup.py -q build_ext --inplace >/dev/null
if ! "$PYTHON" -c "import sys; sys.path.insert(0, '.'); import ssjobs._fastloop" 2>/dev/null; then
    if [[ "${SSJOBS_BINARY_ALLOW_PURE:-}" != "1" ]]; then
        echo "build_binary: ssjobs/_fastloop did not compile (need a C compiler and Python" \
             "headers; SSJOBS_BINARY_ALLOW_PURE=1 builds with the pure-Python loop)" >&2
        exit 1
    fi
    echo "build_binary: WARNING: building with the pure-Python loop" >&2
fi

# 3. The binary.
rm -f dist/ssjobs
"$PYTHON" -m PyInstaller --noconfirm --clean --log-level WARN \
    --distpath dist --workpath build/pyinstaller build_scripts/ssjobs.spec

# 4. It runs, and says what it embeds.
version=$(dist/ssjobs --version)
echo "build_binary: $version"
case "$version" in
    *"fastloop: compiled"*) ;;
    *) [[ "${SSJOBS_BINARY_ALLOW_PURE:-}" == "1" ]] || {
           echo "build_binary: the binary does not use the compiled loop" >&2; exit 1; } ;;
esac
size=$(stat -c %s dist/ssjobs)
echo "build_binary: dist/ssjobs $(( size / 1024 / 1024 )).$(( size % (1024 * 1024) * 10 / 1024 / 1024 )) MiB" \
     "($size bytes), built in $(( $(date +%s) - started ))s"
