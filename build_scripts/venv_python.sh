#!/usr/bin/env bash
# Print the Python that the checkout's venv (.venv) is made from, for .ci/run and the demo
# alike (they share the venv): python3, unless user `nobody` cannot run it (pyenv under
# root's 0700 home) — the tests drop privileges to nobody, and a master that has dropped
# them must still import the standard library — then the distribution's /usr/bin/python3,
# if nobody can run that one. $SSJOBS_CI_PYTHON overrides the choice.
set -euo pipefail
runs_as_nobody() {
    [[ $(id -u) == 0 ]] || return 0      # not root: no test drops privileges
    setpriv --reuid=nobody --regid=nogroup --clear-groups "$1" -P -c "import secrets" \
        >/dev/null 2>&1
}
base="${SSJOBS_CI_PYTHON:-$(command -v python3)}"
if [[ -z "${SSJOBS_CI_PYTHON:-}" ]] && ! runs_as_nobody "$base" && [[ -x /usr/bin/python3 ]] \
        && runs_as_nobody /usr/bin/python3; then
    base=/usr/bin/python3
fi
echo "$base"
