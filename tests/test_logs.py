"""The shared log file: formats, many writers, rotation, reopening, outages and error sinks."""
from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from ssjobs import logs
from ssjobs.errors import ConfigError
from ssjobs.logs import (
    OutageLogger,
    add_error_sink,
    remove_error_sink,
    reopen_logs,
    reset_logging,
    rotate_if_due,
    set_role,
    setup_logging,
)

TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (?P<level>[A-Z]+) \[(?P<pid>\d+)\] "
                       r"(?P<role>.+?): (?P<msg>.*)")
log = logging.getLogger("ssjobs.test")


@pytest.fixture(autouse=True)
def _clean_logging() -> Any:
    yield
    reset_logging()


def lines_of(*paths: Path) -> list[str]:
    return [line for p in paths for line in p.read_text().splitlines()]


def fail() -> None:
    raise ValueError("bad payload")


# -- formats ---------------------------------------------------------------------------------

def test_text_lines_carry_time_level_pid_role_and_the_traceback(tmp_path: Path) -> None:
    setup_logging(tmp_path, role="worker mail.send #2")
    log.info("started %r", "mail.send")
    try:
        fail()
    except ValueError:
        log.exception("job %r failed", "j1")
    first, second, *traceback = lines_of(tmp_path / "ssjobs.log")
    match = TEXT_LINE.fullmatch(first)
    assert match and match["level"] == "INFO" and match["pid"] == str(os.getpid())
    assert match["role"] == "worker mail.send #2" and match["msg"] == "started 'mail.send'"
    match = TEXT_LINE.fullmatch(second)
    assert match and match["level"] == "ERROR" and match["msg"] == "job 'j1' failed"
    assert traceback[0] == "Traceback (most recent call last):"
    assert traceback[-1] == "ValueError: bad payload"


def test_json_lines_carry_the_same_as_fields_plus_extras(tmp_path: Path) -> None:
    setup_logging(tmp_path, fmt="json", role="master", level="debug")
    set_role("worker mail.send #1")
    log.debug("multi\nline")
    try:
        fail()
    except ValueError:
        log.exception("job failed", extra={"job_id": "j1", "topic": "mail.send", "attempt": 2})
    debug, error = (json.loads(line) for line in lines_of(tmp_path / "ssjobs.log"))
    assert debug["msg"] == "multi\nline" and debug["level"] == "DEBUG" and "exc" not in debug
    assert abs(error["time"] - time.time()) < 60 and error["ts"].startswith(
        time.strftime("%Y-%m-%dT"))
    assert (error["level"], error["pid"], error["role"], error["logger"]) == (
        "ERROR", os.getpid(), "worker mail.send #1", "ssjobs.test")
    assert (error["job_id"], error["topic"], error["attempt"]) == ("j1", "mail.send", 2)
    assert error["exc"].endswith("ValueError: bad payload")


def test_without_a_dir_logs_go_to_the_stream_and_levels_filter() -> None:
    stream = io.StringIO()
    setup_logging(None, level="warning", stream=stream)
    log.info("hidden")
    log.warning("shown")
    (line,) = stream.getvalue().splitlines()
    assert TEXT_LINE.fullmatch(line)["msg"] == "shown"  # type: ignore[index]


def test_bad_settings_are_config_errors_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="log.level"):
        setup_logging(tmp_path, level="loud")
    with pytest.raises(ConfigError, match="log.format"):
        setup_logging(tmp_path, fmt="xml")
    with pytest.raises(ConfigError, match="log.rotate"):
        setup_logging(tmp_path, rotate="often")
    with pytest.raises(ConfigError, match="log.class"):
        setup_logging(tmp_path, handler_class="json:JSONDecoder")
    assert logs.parse_rotate("100MB") == 100 * 1024**2
    assert logs.parse_rotate("10kb") == 10 * 1024
    assert logs.parse_rotate("Daily") == "daily" and logs.parse_rotate("") is None


def test_a_custom_handler_class_gets_every_record(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_logs.py").write_text(
        "import logging\n"
        "class Collect(logging.Handler):\n"
        "    lines = []\n"
        "    def emit(self, record):\n"
        "        self.lines.append(self.format(record))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    setup_logging(tmp_path / "logs", handler_class="my_logs:Collect")
    log.warning("to both")
    import my_logs  # type: ignore[import-not-found]

    assert my_logs.Collect.lines[0].endswith("master: to both")
    assert lines_of(tmp_path / "logs" / "ssjobs.log")[0].endswith("master: to both")


def test_capture_root_brings_consumer_loggers_into_the_file(tmp_path: Path) -> None:
    setup_logging(tmp_path, capture_root=True)
    logging.getLogger("consumers.mail").warning("from a consumer")
    log.warning("from ssjobs")
    assert [TEXT_LINE.fullmatch(x)["msg"] for x in lines_of(tmp_path / "ssjobs.log")] == [  # type: ignore[index]
        "from a consumer", "from ssjobs"]


# -- many processes, one file ----------------------------------------------------------------

def fork_writers(count: int, lines: int, body: str = "x" * 250) -> list[int]:
    pids = []
    for n in range(count):
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                set_role(f"worker t #{n}")
                for i in range(lines):
                    log.info("%d:%d:%s", n, i, body)
                status = 0
            finally:
                os._exit(status)
        pids.append(pid)
    return pids


def reap(pids: list[int]) -> None:
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0


def test_eight_forked_writers_never_interleave_a_line(tmp_path: Path) -> None:
    setup_logging(tmp_path, fmt="json")
    reap(fork_writers(8, 2000))
    records = [json.loads(line) for line in lines_of(tmp_path / "ssjobs.log")]
    assert len(records) == 16_000
    for n in range(8):
        mine = [r for r in records if r["role"] == f"worker t #{n}"]
        assert [r["msg"] for r in mine] == [f"{n}:{i}:{'x' * 250}" for i in range(2000)]
        assert len({r["pid"] for r in mine}) == 1 and mine[0]["pid"] != os.getpid()


# -- rotation and reopening -------------------------------------------------------------------

def test_logrotate_move_then_usr1_reopen_loses_no_line(tmp_path: Path) -> None:
    setup_logging(tmp_path)
    previous = signal.signal(signal.SIGUSR1, lambda *_: reopen_logs())  # as a worker does
    path = tmp_path / "ssjobs.log"
    for i in range(300):
        log.info("before %d", i)
    os.rename(path, tmp_path / "ssjobs.log.1")
    for i in range(50):
        log.info("between %d", i)  # still into the moved file, as with logrotate
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    for i in range(300):
        log.info("after %d", i)
    old, new = lines_of(tmp_path / "ssjobs.log.1"), lines_of(path)
    assert len(old) == 350 and len(new) == 300
    assert TEXT_LINE.fullmatch(new[0])["msg"] == "after 0"  # type: ignore[index]


def test_a_moved_or_deleted_file_is_noticed_without_a_signal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "INODE_CHECK_INTERVAL_S", 0.05)
    setup_logging(tmp_path)
    path = tmp_path / "ssjobs.log"
    log.info("one")
    os.rename(path, tmp_path / "moved")
    time.sleep(0.06)
    log.info("two")
    os.unlink(path)
    time.sleep(0.06)
    log.info("three")
    assert [TEXT_LINE.fullmatch(x)["msg"] for x in lines_of(path)] == ["three"]  # type: ignore[index]
    assert len(lines_of(tmp_path / "moved")) == 1


def test_master_rotates_by_size_while_a_worker_writes_and_keeps_n_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "INODE_CHECK_INTERVAL_S", 0.01)
    setup_logging(tmp_path, fmt="json", rotate="10KB", keep=3)
    (worker,) = fork_writers(1, 3000, body="y" * 100)
    rotated = []
    while (done := os.waitpid(worker, os.WNOHANG)) == (0, 0):
        if (target := rotate_if_due()) is not None:
            rotated.append(target)
        time.sleep(0.002)
    assert os.waitstatus_to_exitcode(done[1]) == 0
    remaining = set(tmp_path.glob("ssjobs.log.*"))
    assert len(rotated) > 3 and remaining == set(rotated[-3:])
    assert all(re.fullmatch(r"ssjobs\.log\.\d{8}-\d{6}(\.\d+)?", p.name) for p in remaining)
    records = [json.loads(x) for x in lines_of(*rotated[-3:], tmp_path / "ssjobs.log")]
    numbers = [int(r["msg"].split(":")[1]) for r in records]
    assert numbers == sorted(numbers) and numbers[-1] == 2999  # whole lines, none out of order


def test_daily_rotation_happens_once_the_day_changes(tmp_path: Path) -> None:
    setup_logging(tmp_path, rotate="daily")
    log.info("today")
    assert rotate_if_due() is None
    target = rotate_if_due(now=time.time() + 86_400)
    assert target is not None and lines_of(target)[0].endswith("today")
    assert rotate_if_due(now=time.time() + 86_400) is None  # the new file is empty


def test_without_rotate_nothing_is_ever_rotated(tmp_path: Path) -> None:
    setup_logging(tmp_path)
    log.info("x")
    assert rotate_if_due(now=time.time() + 10 * 86_400) is None


# -- outages and error sinks -----------------------------------------------------------------

def test_an_outage_is_logged_once_when_it_begins_and_once_when_it_ends() -> None:
    stream = io.StringIO()
    setup_logging(None, stream=stream, level="debug")
    outage = OutageLogger(log)
    assert outage.note_success("redis") is False  # nothing to end
    results = [outage.note_failure("redis", ConnectionError("refused")) for _ in range(5)]
    assert results == [True, False, False, False, False]
    assert outage.note_success("redis") is True
    assert outage.note_success("redis") is False
    outage.note_failure("redis", ConnectionError("refused"))
    messages = [TEXT_LINE.fullmatch(x)["msg"] for x in stream.getvalue().splitlines()]  # type: ignore[index]
    assert len(messages) == 3
    assert messages[0] == ("'redis' unavailable: ConnectionError: refused "
                           "(not logged again until it recovers)")
    assert re.fullmatch(r"'redis' recovered after \d+\.\d s \(5 failures\)", messages[1])
    assert messages[2].startswith("'redis' unavailable")


def test_error_sinks_get_error_records_only_and_never_break_logging(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging, "raiseExceptions", False)  # the broken sink's traceback
    setup_logging(None, stream=io.StringIO())
    got: list[dict[str, Any]] = []

    def broken(record: dict[str, Any]) -> None:
        raise RuntimeError("sink bug")

    def noisy(record: dict[str, Any]) -> None:
        got.append(record)
        log.error("an error inside a sink is not fed back")

    add_error_sink(broken)
    add_error_sink(noisy)
    try:
        log.warning("not an error")
        log.error("failed %r", "j1", extra={"job_id": "j1"})
        log.critical("very bad")
    finally:
        remove_error_sink(broken)
        remove_error_sink(noisy)
    assert [(r["level"], r["msg"]) for r in got] == [("ERROR", "failed 'j1'"),
                                                     ("CRITICAL", "very bad")]
    assert got[0]["job_id"] == "j1" and got[0]["role"] == "master"


def test_a_forked_child_does_not_call_its_parents_sinks() -> None:
    setup_logging(None, stream=io.StringIO())
    read_end, write_end = os.pipe()

    def sink(record: dict[str, Any]) -> None:
        os.write(write_end, record["msg"].encode() + b";")

    add_error_sink(sink)
    try:
        pid = os.fork()
        if pid == 0:
            try:
                log.error("child")
            finally:
                os._exit(0)
        reap([pid])
        log.error("parent")
    finally:
        remove_error_sink(sink)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        assert pipe.read() == b"parent;"
