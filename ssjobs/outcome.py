"""What the hot loop reports about a job that did not succeed: one definition shared by the
compiled loop and its pure-Python twin (successes are only counted, never reported)."""
from __future__ import annotations

import enum
from typing import Any, NamedTuple


class Code(enum.IntEnum):
    FAILED = 1       # raised, returned False, or timed out: retried with back-off
    RETRY = 2        # raised ssjobs.Retry: retried after its delay
    REJECT = 3       # raised ssjobs.Reject: dead-lettered at once
    MALFORMED = 4    # not an envelope: dead-lettered with the raw bytes
    TOO_LARGE = 5    # over max_payload_bytes: dead-lettered without being decoded


class Failure(NamedTuple):
    raw: bytes                    # the envelope as fetched
    job: Any                      # the decoded ssjobs.Job, None for MALFORMED / TOO_LARGE
    code: Code
    exc: BaseException | None     # None when the consumer returned False
    traceback: str                # "" unless the consumer raised an unexpected exception
