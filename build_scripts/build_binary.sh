#!/usr/bin/env bash
# Build the one-file binary dist/ssjobs from a clean clone, with one command:
#     build_scripts/build_binary.sh
# Needs a C compiler (the compiled hot loop is part of the binary), and installs what the
# build itself needs (Cython, PyInstaller, the runtime dependencies) with pip when missing.
# The binary runs on Linux machines with this machine's CPU architecture and a glibc at least
# as new as this one's (build on the oldest distribution you deploy to). At every run it
# unpacks itself (~20 MB) into $TMPDIR, else /tmp, which must allow executables (no noexec
# mount) and symlinks; a running master keeps its copy until it exits, and copies left by a
# SIGKILLed instance are removed by the next ssjobs command (build_scripts/rthook_ssjobs.py).
#
# Environment: PYTHON (default python3) is the Python that gets embedded;
# SSJOBS_BINARY_ALLOW_PURE=1 builds without the compiled loop when it cannot be compiled.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
started=$(date +%s)

pip_install() {
    "$PYTHON" -P -m pip install -q --disable-pip-version-check "$@"
}

# 1. What the build needs (installed with pip when missing): the runtime dependencies,
#    Cython for the hot loop and PyInstaller; then the optional packages the binary carries
#    when they can be had (hiredis: faster replies; rich: status tables and `top`;
#    setproctitle: process titles; prometheus_client: [metrics]; starlette, uvicorn and
#    jinja2: the dashboard, `ssjobs web`).
missing() {
    "$PYTHON" -P -c 'import importlib.util, sys
sys.exit(0 if importlib.util.find_spec(sys.argv[1]) is None else 1)' "$1"
}
for spec in redis:redis msgpack:msgpack click:click cronsim:cronsim Cython:Cython \
            PyInstaller:pyinstaller; do
    if missing "${spec%%:*}"; then pip_install "${spec#*:}"; fi
done
for spec in hiredis:hiredis rich:rich setproctitle:setproctitle \
            prometheus_client:prometheus-client starlette:starlette uvicorn:uvicorn \
            jinja2:jinja2; do
    if missing "${spec%%:*}"; then
        pip_install "${spec#*:}" || echo "build_binary: WARNING: building without ${spec#*:}" >&2
    fi
done

# 2. The compiled hot loop, built in place next to its source (a no-op when up to date).
#    Intermediate files go under .build/ (a dot-dir: a folder named build/ at the repo root
#    would shadow the `build` package for anything run from here).
"$PYTHON" -P setup.py -q build_ext --inplace --build-temp .build/temp >/dev/null
if ! "$PYTHON" -P -c "import sys; sys.path.insert(0, '.'); import ssjobs._fastloop" 2>/dev/null; then
    if [[ "${SSJOBS_BINARY_ALLOW_PURE:-}" != "1" ]]; then
        echo "build_binary: ssjobs/_fastloop did not compile (need a C compiler and Python" \
             "headers; SSJOBS_BINARY_ALLOW_PURE=1 builds with the pure-Python loop)" >&2
        exit 1
    fi
    echo "build_binary: WARNING: building with the pure-Python loop" >&2
fi

# 3. The binary.
rm -f dist/ssjobs
"$PYTHON" -P -m PyInstaller --noconfirm --clean --log-level WARN \
    --distpath dist --workpath .build/pyinstaller build_scripts/ssjobs.spec

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
