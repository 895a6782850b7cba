"""A check the packet-source tests share: received payloads frame back into the messages sent."""
from __future__ import annotations

import numpy as np

from parsers.moldudp64 import MoldSessionTracker


def assert_frames_back(got: list[bytes], ts: np.ndarray, messages: list[bytes]) -> None:
    """The MoldUDP64 payloads ``got`` (received at ``ts``) hold exactly ``messages``, with no gap."""
    data = np.frombuffer(b"".join(got), np.uint8)
    lengths = np.array([len(p) for p in got], np.int64)
    tracker = MoldSessionTracker()
    frames = tracker.frame_packets(data, np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths, ts)
    assert tracker.gaps == [] and tracker.messages == len(messages)
    assert [data[o:o + n].tobytes() for o, n in zip(frames["offset"], frames["length"])] == messages
