"""``ssjobs job show|cancel TOPIC ID``: a tracked job's record from the shell (topics with
``track = true``; docs/reference.md, "Tracked jobs")."""
from __future__ import annotations

import json
import os

from .. import tracking
from ..errors import ControlError
from ..redact import redact
from ..text import when
from . import common
from .dead import payload_text


def _record_of(cfg_path: str | os.PathLike, topic: str, job_id: str, *, cancel: bool = False
               ) -> tuple[dict | str | None, str]:
    cfg = common.load(cfg_path)
    job = common.job_of(cfg, topic)
    broker = common.broker_for(cfg, job)
    with common.redis_errors(cfg.redis_for(job)):
        found = (tracking.cancel if cancel else tracking.read)(broker.client, broker.keys,
                                                               job_id)
    if found is None:
        hint = "" if job.track else \
            f"; topic {topic!r} does not track its jobs (track = true in its [[jobs]])"
        raise ControlError(f"no job {job_id!r} in {topic!r}: unknown or its record "
                           f"expired{hint}")
    return found, topic


def show(cfg_path: str | os.PathLike, topic: str, job_id: str, *, as_json: bool = False) -> int:
    record, _ = _record_of(cfg_path, topic, job_id)
    assert isinstance(record, dict)
    if as_json:
        print(json.dumps(record, indent=2, default=repr))
        return 0
    error = record.get("error") or {}
    progress = record.get("progress") or {}
    fields = [("id", record["id"]), ("topic", record["topic"]), ("state", record["state"]),
              ("attempts", record["attempts"]),
              ("enqueued at", when(record["enqueued_at"])),
              ("started at", when(record["started_at"])),
              ("finished at", when(record["finished_at"]))]
    if progress:
        fields.append(("progress", f"{float(progress.get('fraction') or 0):.0%} "
                                   f"{progress.get('message') or ''}".rstrip()))
    if record.get("cancel_requested") and record["state"] == "running":
        fields.append(("cancel", "asked to stop (the consumer sees job.cancelled)"))
    if error:
        fields.append(("error", redact(f"{error.get('type')}: {error.get('message')}")))
    if record.get("result_error"):
        fields.append(("result", f"not kept: {record['result_error']}"))
    for name, value in fields:
        print(f"{name + ':':<13}{value}")
    if record.get("result") is not None:
        print("result:")
        print(payload_text(record["result"]))
    return 0


WHAT_CANCEL_DID = {
    "queued": "cancelled: it will not run",
    "delayed": "cancelled: it will not run",
    "retrying": "cancelled: it will not run again",
    "running": "running: asked to stop (its consumer sees job.cancelled)",
}


def cancel(cfg_path: str | os.PathLike, topic: str, job_id: str) -> int:
    state, _ = _record_of(cfg_path, topic, job_id, cancel=True)
    assert isinstance(state, str)
    print(f"job {job_id} was {WHAT_CANCEL_DID.get(state, state + ': left as it is')}")
    return 0
