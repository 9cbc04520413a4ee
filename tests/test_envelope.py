import msgpack
import pytest

from ssjobs import envelope
from ssjobs.errors import EnvelopeError


def test_round_trip_keeps_every_field():
    raw = envelope.encode("id1", "mail.send", {"to": "a@b.c", "n": [1, 2.5, None, b"\x00"]},
                          attempts=2, enqueued_at=1764160000.25, headers={"h": "v"})
    job = envelope.decode(raw)
    assert (job.id, job.topic, job.attempts, job.enqueued_at) == ("id1", "mail.send", 2,
                                                                   1764160000.25)
    assert job.payload == {"to": "a@b.c", "n": [1, 2.5, None, b"\x00"]}
    assert job.headers == {"h": "v"}


def test_layout_is_fixed_for_lua():
    raw = envelope.encode(envelope.new_id(), "t", "x")
    assert raw[:2] == b"\x97\x01"
    assert msgpack.unpackb(raw)[0] == 1


@pytest.mark.parametrize("garbage", [
    b"", b"\xc1", b"hello", msgpack.packb([1, 2, 3]), msgpack.packb({"a": 1}),
    msgpack.packb([2, "i", "t", 0, 1.0, {}, None]),         # unknown version
    msgpack.packb([1, 5, "t", 0, 1.0, {}, None]),           # id not a str
    msgpack.packb([1, "i", "t", -1, 1.0, {}, None]),        # negative attempts
    msgpack.packb([1, "i", "t", 0, "x", {}, None]),         # bad time
    msgpack.packb([1, "i", "t", 0, 1.0, "h", None]),        # headers not a map
    envelope.encode("i", "t", 1) + b"trailing",
])
def test_garbage_raises_envelope_error_only(garbage):
    with pytest.raises(EnvelopeError):
        envelope.decode(garbage)


def test_ids_are_unique_and_sort_by_time():
    ids = [envelope.new_id(1764160000.0 + i / 1000) for i in range(2000)]
    assert len(set(ids)) == 2000
    assert ids == sorted(ids)
    assert len(ids[0]) == 32


def test_unencodable_payload_names_the_type():
    with pytest.raises(TypeError, match="set"):
        envelope.encode_payload({"x": {1, 2}})
