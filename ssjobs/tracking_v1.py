"""Tracked-job records of the first layout (one Redis hash per job, ``P:{T}:job:ID``),
converted into the records hash a topic keeps now (docs/protocol.md, "Job records") by a
master when it starts, once per topic. Delete this module when no deployment can still
hold such records."""
from __future__ import annotations

import math
import time
from typing import Any

from .broker import TopicKeys, translate, with_lib
from .tracking import FINISHED, json_value, number, record

_CONVERT = with_lib("convert_records")


# The conf field that says a topic's records of the first layout were converted.
_LAYOUT_FIELD, _LAYOUT = "records_layout", b"2"


def convert_old_records(client: Any, keys: TopicKeys, result_ttl: float) -> int:
    """Records of the first layout (one hash per job, ``P:{T}:job:ID``, before the records
    hash) converted into the records hash, once per topic (its conf hash remembers); the
    number converted. A job queued before the upgrade keeps its state, a finished one its
    result until it expires."""
    with translate():
        if client.hget(keys.conf, _LAYOUT_FIELD) == _LAYOUT:
            return 0
        script, now, converted = client.register_script(_CONVERT), time.time(), 0
        skip = len(f"{keys.base}:job:".encode())
        for key in client.scan_iter(match=_glob_escape(keys.base) + ":job:*", count=1000):
            job_id = key[skip:]
            old = {k.decode(): v for k, v in client.hgetall(key).items()}
            state, expires_at, fields, cancel = _old_record(old, client.ttl(key), now,
                                                            result_ttl)
            converted += int(script(keys=[key, keys.jobs],
                                    args=[job_id, record(state, fields, expires_at),
                                          expires_at, cancel]))
        client.hset(keys.conf, _LAYOUT_FIELD, _LAYOUT)
    return converted


def _old_record(old: dict[str, bytes], ttl: int, now: float, result_ttl: float
                ) -> tuple[str, int, dict, str]:
    """(state, expires_at, fields, cancel still to be seen through) of a first-layout record:
    an expiry then was the key's TTL; "running" is now read from the in-flight lists."""
    text = {k: v.decode(errors="replace") for k, v in old.items() if k != "result"}
    state = text.get("state") or "queued"
    if state == "running":
        state = "queued"
    fields: dict[str, Any] = {"attempts": int(number(text.get("attempts"), 0))}
    for name in ("enqueued_at", "started_at", "finished_at"):
        if number(text.get(name)) is not None:
            fields[name] = number(text.get(name))
    for name in ("error", "progress"):
        if text.get(name):
            fields[name] = json_value(text[name])
    for name in ("result_error", "unique"):
        if text.get(name):
            fields[name] = text[name]
    if old.get("result"):
        fields["result"] = old["result"]
    finished = state in FINISHED
    expires_at = math.ceil(now + (ttl if ttl > 0 else result_ttl)) if finished else 0
    # a cancelled record without a TTL was a queued job the take step had still to drop
    cancel = text.get("cancel") == "1" or (state == "cancelled" and ttl < 0)
    return state, expires_at, fields, "1" if cancel else "0"


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
