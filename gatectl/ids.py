"""Time-ordered identifiers (UUID version 7, RFC 9562) for events and passages.

A random UUID lands on a random leaf of every index that holds it, so a journal with a
million passages writes (and checkpoints) pages scattered across the whole file for each
new event. A version-7 UUID starts with the Unix time in milliseconds: new ids go to the
end of the index, and the cost of an insert stays flat as the journal grows. They are
still UUIDs (CONTRACT 5: ``event_id`` is a uuid); Python 3.11 has no ``uuid.uuid7``.
"""

from __future__ import annotations

import os
import time


def time_ordered_id() -> str:
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")  # 80 bits, 74 used
    value = (ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | (rand >> 62 & 0xFFF) << 64 | 0b10 << 62 | rand & (1 << 62) - 1
    h = f"{value:032x}"  # str(uuid.UUID(int=value)), without building the UUID
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
