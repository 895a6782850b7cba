"""decode_batch: every message of a mixed batch, grouped by type in sequence order; bad ones skipped."""

from parsers import itch50
from parsers.frames import frames_of


def test_decode_batch_groups_by_type_and_skips_what_cannot_be_decoded():
    msgs = [
        itch50.encode(b"A", order_ref=1, side=b"B", shares=10, stock=b"AAA", price=1),
        itch50.encode(b"D", order_ref=1),
        b"~" + bytes(11),  # unknown type
        itch50.encode(b"A", order_ref=2, side=b"S", shares=20, stock=b"BBB", price=2),
        itch50.encode(b"D", order_ref=2)[:10],  # shorter than specified
        itch50.encode(b"S", event_code=b"Q"),
    ]
    buf, frames = frames_of(msgs)
    decoded, skipped = itch50.decode_batch(buf, frames)
    assert skipped == 2
    assert sorted(decoded) == [b"A", b"D", b"S"]
    assert decoded[b"A"]["order_ref"].tolist() == [1, 2] and decoded[b"A"]["stock"].tolist() == [b"AAA     ", b"BBB     "]
    assert decoded[b"D"]["order_ref"].tolist() == [1] and decoded[b"S"]["event_code"].tolist() == [b"Q"]
