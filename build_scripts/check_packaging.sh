#!/usr/bin/env bash
# The pip package, as producers get it (`pip install ssjobs`):
#   1. `python -m build` makes an sdist and, from that sdist, a wheel;
#   2. the wheel carries the compiled hot loop, every module of the source tree and the Lua
#      scripts, and installs into a fresh venv where `ssjobs --version` says "compiled";
#   3. the sdist installs without a C compiler (CC=false) and falls back to the pure-Python
#      twin, saying so in one warning line;
#   4. `import ssjobs.producer` pulls in no click and no worker-only code.
# Needs network access to PyPI (build requirements and runtime dependencies).
# Usage: build_scripts/check_packaging.sh [WORKDIR]   (default: a temp dir, removed after)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
started=$(date +%s)
if [[ $# -ge 1 ]]; then
    work="$1"; mkdir -p "$work"
else
    work=$(mktemp -d -t ssjobs-packaging-XXXXXX)
    trap 'rm -rf "$work"' EXIT
fi
work=$(cd "$work" && pwd)
say() { echo "check_packaging: $*"; }
die() { echo "check_packaging: FAILED: $*" >&2; exit 1; }
# -P everywhere: nothing is imported from the current directory (a stray build/ folder
# there would otherwise shadow the real `build` package).
pip_q() { "$1" -P -m pip install -q --disable-pip-version-check --no-cache-dir "${@:2}"; }

"$PYTHON" -P -c "import build" 2>/dev/null || pip_q "$PYTHON" build

# 0. A clean copy of the tracked files: nothing an earlier step left in the checkout (a
#    compiled .so, build outputs, a venv) can leak into the packages.
src="$work/src"
mkdir -p "$src"
git ls-files -z | xargs -0 cp --parents -t "$src" 2>/dev/null \
    || die "copying the tracked files (is this a git checkout?)"
cd "$src"

# 1. sdist, then a wheel built from it (proves the sdist is complete).
"$PYTHON" -P -m build --outdir "$work/dist" . >"$work/build.log" 2>&1 \
    || { tail -30 "$work/build.log"; die "python -m build"; }
sdist=$(ls "$work"/dist/ssjobs-*.tar.gz)
wheel=$(ls "$work"/dist/ssjobs-*.whl)
say "built $(basename "$sdist") and $(basename "$wheel")"

# 2. What the wheel carries.
"$PYTHON" -P - "$wheel" "$sdist" <<'PY' || die "package contents"
import sys, tarfile, zipfile
wheel, sdist = sys.argv[1], sys.argv[2]
names = zipfile.ZipFile(wheel).namelist()
need = ["ssjobs/_fastloop_py.py", "ssjobs/producer.py", "ssjobs/lua/"]
missing = [n for n in need if not any(x.startswith(n) for x in names)]
assert not missing, f"wheel lacks {missing}"
assert any(n.startswith("ssjobs/_fastloop.") and n.endswith(".so") for n in names), \
    "wheel has no compiled ssjobs/_fastloop*.so"
assert "-linux_" in wheel or "manylinux" in wheel, f"not a platform wheel: {wheel}"
from pathlib import Path
source = sorted(str(p) for p in Path("ssjobs").rglob("*.py")
                if (p.parent / "__init__.py").exists() and "__pycache__" not in p.parts)
absent = [n for n in source if n not in names]
assert not absent, (f"wheel lacks {absent}: is every subpackage listed in pyproject.toml "
                    "[tool.setuptools] packages?")
web_files = sorted(str(p) for d in ("templates", "static")
                   for p in Path("ssjobs/web", d).iterdir() if p.is_file())
assert not [n for n in web_files if n not in names], "wheel lacks the dashboard's templates"
lua = [n for n in names if n.endswith(".lua")]
src = tarfile.open(sdist).getnames()
for needed in ("/setup.py", "/ssjobs/_fastloop.pyx", "/pyproject.toml"):
    assert any(n.endswith(needed) for n in src), f"sdist lacks {needed}"
assert sum(n.endswith(".lua") for n in src) == len(lua), "sdist and wheel Lua files differ"
print(f"check_packaging: wheel has the compiled loop, all {len(source)} modules of "
      f"ssjobs/, {len(lua)} Lua files and {len(web_files)} dashboard files")
PY

# 3. The wheel in a fresh venv.
"$PYTHON" -m venv "$work/venv-wheel"
pip_q "$work/venv-wheel/bin/python" "$wheel"
version=$("$work/venv-wheel/bin/ssjobs" --version)
[[ "$version" == *"fastloop: compiled"* ]] || die "wheel install: $version"
say "wheel install: $version"

# 4. The producer import stays light.
"$work/venv-wheel/bin/python" -P - <<'PY' || die "producer import pulls in too much"
import sys
from ssjobs.producer import Producer  # noqa: F401
heavy = sorted({"click", "rich", "setproctitle", "prometheus_client", "ssjobs.master",
                "ssjobs.worker", "ssjobs.cli", "ssjobs.control"} & set(sys.modules))
assert not heavy, f"`from ssjobs.producer import Producer` imported {heavy}"
print("check_packaging: producer import pulls in no click and no worker-only module")
PY

# 5. The sdist without a compiler.
"$PYTHON" -m venv "$work/venv-sdist"
CC=false "$work/venv-sdist/bin/python" -P -m pip install -v --disable-pip-version-check \
    --no-cache-dir "$sdist" >"$work/sdist-install.log" 2>&1 \
    || { tail -30 "$work/sdist-install.log"; die "sdist install without a compiler"; }
warnings=$(grep -c "WARNING: ssjobs._fastloop not compiled" "$work/sdist-install.log" || true)
[[ "$warnings" == 1 ]] || die "expected one 'not compiled' warning line, got $warnings"
grep "WARNING: ssjobs._fastloop not compiled" "$work/sdist-install.log" | sed 's/^ *//' | cut -c1-120
version=$("$work/venv-sdist/bin/ssjobs" --version)
[[ "$version" == *"fastloop: pure"* ]] || die "sdist without compiler: $version"
say "sdist install without a compiler: $version"

say "ok in $(( $(date +%s) - started ))s"
