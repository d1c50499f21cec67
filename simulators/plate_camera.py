"""A simulated plate recognition camera (车牌识别相机) over a lane's arrival loop.

When a vehicle drives onto the arrival loop the camera reads its plate and POSTs the read
to the daemon's local API, ``POST /api/v1/lanes/{lane}/plates`` with ``{"plate",
"confidence", "captured_at"}``, under its own bearer token (a ``camera`` user), as a
real camera's upload client does. Reading is imperfect, as on a real lane:

- a share of the vehicles (``miss_rate``) is not read at all: dirt, glare, a plate hidden
  by the lorry in front. Nothing is posted;
- a share (``misread_rate``) is read with one character wrong, swapped for one that looks
  alike (``0``/``D``, ``8``/``B``, ``1``/``7``...), at a lower confidence;
- the rest are read right, at a high confidence.

The upload takes a moment after the vehicle arrives (``delay_s``), so a read may reach the
daemon just before or just after its IO poll sees the loop: both must work.

    camera = PlateCameraSimulator("B1-IN", rng=random.Random(7))
    camera.connect("http://127.0.0.1:8470", "camera-token")
    camera.capture("云A12345")          # on the arrival loop: posts in the background
    await camera.drain()                 # every upload under way finished
    camera.reads                         # what was posted, in order (PlateShot)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import aiohttp

__all__ = ["LOOK_ALIKE", "PlateCameraSimulator", "PlateShot", "misread"]

log = logging.getLogger(__name__)

LOOK_ALIKE: Final[dict[str, str]] = {
    "0": "D", "D": "0", "O": "0", "Q": "0",
    "8": "B", "B": "8",
    "1": "7", "7": "1",
    "5": "S", "S": "5",
    "2": "Z", "Z": "2",
    "6": "G", "G": "6",
    "4": "A", "A": "4",
    "3": "8", "9": "8",
    "K": "X", "X": "K",
    "H": "M", "M": "H",
    "T": "1", "L": "1",
}
"""What a plate character is misread as (the province character is never misread: the
recogniser reads it from its own small set)."""


@dataclass(frozen=True, slots=True)
class PlateShot:
    """One read the camera posted: what it sent, what it saw, and the API's answer."""

    plate: str
    true_plate: str
    confidence: float
    captured_at: datetime
    status: int | None = None  # the HTTP status (None: the daemon was not reachable)

    @property
    def misread(self) -> bool:
        return self.plate != self.true_plate


def misread(plate: str, rng: random.Random) -> str:
    """``plate`` with one character (after the province) swapped for a look-alike."""
    spots = [i for i, ch in enumerate(plate) if i > 0 and ch in LOOK_ALIKE]
    if not spots:
        return plate
    i = rng.choice(spots)
    return plate[:i] + LOOK_ALIKE[plate[i]] + plate[i + 1:]


class PlateCameraSimulator:
    """One lane's plate camera. See the module docstring."""

    def __init__(
        self,
        lane_id: str,
        *,
        miss_rate: float = 0.05,
        misread_rate: float = 0.03,
        delay_s: tuple[float, float] = (0.05, 0.3),
        rng: random.Random | None = None,
    ) -> None:
        if not 0.0 <= miss_rate <= 1.0 or not 0.0 <= misread_rate <= 1.0 or miss_rate + misread_rate > 1.0:
            raise ValueError("miss_rate and misread_rate are shares within 0..1, together at most 1")
        if not 0.0 <= delay_s[0] <= delay_s[1]:
            raise ValueError("delay_s is (shortest, longest), both >= 0")
        self.lane_id = lane_id
        self.miss_rate = miss_rate
        self.misread_rate = misread_rate
        self.delay_s = delay_s
        self.rng = rng or random.Random()
        self.url: str | None = None
        self.token: str | None = None
        self.reads: list[PlateShot] = []
        """Every read posted (or tried), oldest first."""
        self.counts: Counter[str] = Counter()
        """``seen``, ``missed``, ``misread``, ``posted``, ``accepted``, ``refused``, ``failed``."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    def connect(self, api_url: str, token: str) -> None:
        """Post to the daemon's local API at ``api_url`` with the bearer ``token``."""
        self.url = f"{api_url.rstrip('/')}/api/v1/lanes/{self.lane_id}/plates"
        self.token = token

    def read(self, plate: str) -> tuple[str, float] | None:
        """What the recogniser makes of ``plate``: (text, confidence), or None if missed."""
        roll = self.rng.random()
        if roll < self.miss_rate:
            return None
        if roll < self.miss_rate + self.misread_rate:
            wrong = misread(plate, self.rng)
            if wrong != plate:
                return wrong, round(self.rng.uniform(0.55, 0.82), 3)
        return plate, round(self.rng.uniform(0.88, 0.995), 3)

    def capture(self, plate: str) -> None:
        """A vehicle with ``plate`` drove onto the arrival loop: read it and, unless it was
        missed, post the read in the background (a camera does not hold the lane up)."""
        self.counts["seen"] += 1
        result = self.read(plate)
        if result is None:
            self.counts["missed"] += 1
            return
        text, confidence = result
        if text != plate:
            self.counts["misread"] += 1
        captured_at = datetime.now().astimezone()
        shot = PlateShot(text, plate, confidence, captured_at)
        task = asyncio.get_running_loop().create_task(self._upload(shot), name=f"plate {self.lane_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _upload(self, shot: PlateShot) -> None:
        await asyncio.sleep(self.rng.uniform(*self.delay_s))
        status: int | None = None
        if self.url is None or self.token is None:
            self.counts["failed"] += 1
            log.warning("plate camera %s is not connected to a daemon: read %s dropped", self.lane_id, shot.plate)
        else:
            body = {"plate": shot.plate, "confidence": shot.confidence, "captured_at": shot.captured_at.isoformat()}
            try:
                session = await self._client()
                async with session.post(self.url, json=body,
                                        headers={"Authorization": f"Bearer {self.token}"}) as resp:
                    status = resp.status
                    await resp.read()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.warning("plate camera %s could not post %s: %r", self.lane_id, shot.plate, exc)
            self.counts["posted"] += 1
            if status is None:
                self.counts["failed"] += 1
            elif status == 200:
                self.counts["accepted"] += 1
            else:
                self.counts["refused"] += 1
        self.reads.append(PlateShot(shot.plate, shot.true_plate, shot.confidence, shot.captured_at, status))

    async def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3))
        return self._session

    async def drain(self) -> None:
        """Wait for every upload under way."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        """Stop: uploads under way are abandoned, the HTTP session closed (idempotent)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._session is not None:
            with contextlib.suppress(Exception):
                await self._session.close()
            self._session = None
