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
# It carries this machine's redis-server (for [redis] url = "embedded") and the shared
# libraries it loads; their licenses are copied to dist/ssjobs-licenses/ (ship them along).
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

# 1b. The redis-server that [redis] url = "embedded" runs, copied from this machine's
#     package (Debian: redis-server) into .build/redis/ for the spec, with the copyright
#     file of every package that owns it or a library it loads (they are bundled with it).
#     Redis up to 7.2 is BSD-3-Clause; 7.4 changed its license (RSALv2/SSPLv1) and 8.0
#     added AGPLv3: check what you ship (docs/deploy.md, "Embedded Redis").
redis_bin=$(command -v redis-server || true)
if [[ -z "$redis_bin" ]]; then
    echo "build_binary: no redis-server to bundle (url = \"embedded\" runs it):" \
         "apt-get install -y redis-server" >&2
    exit 1
fi
redis_real=$(readlink -f "$redis_bin")
redis_version=$("$redis_bin" --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')
rm -rf .build/redis
mkdir -p .build/redis/licenses
cp "$redis_real" .build/redis/redis-server   # its own name: Debian's is a link to
chmod 755 .build/redis/redis-server           # redis-check-rdb, which acts on argv[0]
owner_of() {  # the Debian package of a file, tried as given, resolved and under /usr
    local f
    for f in "$1" "$(readlink -f "$1")" "/usr$1" "${1#/usr}"; do
        dpkg -S "$f" 2>/dev/null | head -1 | cut -d: -f1 && return 0
    done
    return 1
}
if command -v dpkg >/dev/null 2>&1; then
    for f in "$redis_bin" $(ldd "$redis_real" | awk '$2 == "=>" && $3 ~ /^\// {print $3}'); do
        pkg=$(owner_of "$f" || true)
        if [[ -n "$pkg" && -f "/usr/share/doc/$pkg/copyright" ]]; then
            cp "/usr/share/doc/$pkg/copyright" ".build/redis/licenses/$pkg.copyright"
        fi
    done
else
    echo "build_binary: WARNING: no dpkg: add the licenses of redis-server and its" \
         "libraries to .build/redis/licenses/ yourself" >&2
fi
case "$redis_version" in
    6.2.*|7.0.*|7.2.*) ;;
    *) echo "build_binary: WARNING: redis-server $redis_version: Redis 7.4 and later are" \
            "not BSD-licensed; see .build/redis/licenses/ before you ship" >&2 ;;
esac
echo "build_binary: bundling redis-server $redis_version from $redis_real" \
     "($(ls .build/redis/licenses | wc -l) license files)"

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

# 4. It runs, and says what it embeds; the licenses of what it carries go next to it.
version=$(PATH=/nonexistent dist/ssjobs --version)
echo "build_binary: $version"
case "$version" in
    *"fastloop: compiled"*) ;;
    *) [[ "${SSJOBS_BINARY_ALLOW_PURE:-}" == "1" ]] || {
           echo "build_binary: the binary does not use the compiled loop" >&2; exit 1; } ;;
esac
case "$version" in
    *"redis-server $redis_version bundled"*) ;;
    *) echo "build_binary: the binary does not run its bundled redis-server" >&2; exit 1 ;;
esac
rm -rf dist/ssjobs-licenses
cp -r .build/redis/licenses dist/ssjobs-licenses
size=$(stat -c %s dist/ssjobs)
echo "build_binary: dist/ssjobs $(( size / 1024 / 1024 )).$(( size % (1024 * 1024) * 10 / 1024 / 1024 )) MiB" \
     "($size bytes), built in $(( $(date +%s) - started ))s"
