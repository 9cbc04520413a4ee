"""What docs/deploy.md ships: the systemd unit is one systemd accepts, and it runs ssjobs
the way the master's notify support expects."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "examples" / "systemd" / "ssjobs.service"


def test_the_systemd_unit_passes_systemd_analyze_verify(tmp_path):
    verify = shutil.which("systemd-analyze")
    if verify is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart's program exists: point it at this ssjobs
    ssjobs = shutil.which("ssjobs", path=str(Path(sys.executable).parent)) or sys.executable
    unit = tmp_path / "ssjobs.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/ssjobs", ssjobs))
    result = subprocess.run([verify, "verify", str(unit)], capture_output=True, text=True,
                            timeout=60)
    # it exits 0 on an unknown value too, only warning: any output is a defect
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result


def test_the_unit_runs_the_master_in_the_foreground_with_notify():
    text = UNIT.read_text()
    assert "Type=notify" in text and "WatchdogSec=" in text
    assert "ExecStart=/usr/local/bin/ssjobs start --foreground -c " in text
    assert "ExecReload=/bin/kill -HUP $MAINPID" in text
    assert "KillMode=mixed" in text
