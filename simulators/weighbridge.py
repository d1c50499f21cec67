"""A weighing indicator on a pty, streaming the current weight like continuous mode.

Real indicators in continuous mode send the displayed weight several times a second
whether or not anybody listens; this one does the same every ``interval_s``. If the line
is backed up (nobody has read the port for a long time) a frame is skipped rather than
queued, so a driver that opens the port late does not get a backlog of stale weights.

Every fault can be scripted, from a test or from a demo in the same event loop, and
changed while it streams:

- ``silent``: powered but sending nothing (a cut TX wire);
- ``noise``: the share of frames hit by a noise burst on the way (0.3 = about three in
  ten). A hit frame arrives damaged, so the driver drops it as one bad frame and the
  share of bad frames it sees follows ``noise``;
- ``never_settles``: the weight keeps changing by a few kg every frame (a lorry rocking,
  wind on the platform), so it is never stable; toledo-continuous also sets the motion
  bit. xk3190 has no motion bit: there, no two frames in a row carry the same weight;
- `garbage` puts line noise (random bytes, any value) between two frames;
- `vanish` / `unplug` pulls the adapter out, `replug` plugs a fresh one in at the same
  path (needs ``link``, see `simulators.pty.SwitchablePort`).

    sim = WeighbridgeSimulator("xk3190-tf0", interval_s=0.05, link=tmp_path / "scale0")
    await sim.start()
    sim.set_weight(31250)             # a lorry drives on
    sim.set_weight(31250, motion=True)  # toledo-continuous shows the motion flag
    sim.noise = 0.3                   # a noisy cable
    sim.unplug(); await sim.replug()  # the USB adapter pulled and plugged back
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from types import TracebackType

from drivers.codecs import Control
from drivers.codecs.weight import WeightFormat, encode_weight, weight_codec
from simulators.pty import PtyPort, SwitchablePort

__all__ = ["WeighbridgeSimulator"]

_JITTER_KG = (-5, -4, -3, -2, -1, 1, 2, 3, 4, 5)
"""How far a never-settling weight wanders from the set weight, frame by frame."""
_NOT_STX = bytes(b for b in range(256) if b & 0x7F != Control.STX)


class WeighbridgeSimulator:
    """Plays one weighing indicator speaking ``fmt`` (see `drivers.codecs.weight`).

    ``noise``, ``never_settles`` and ``silent`` are attributes: set them at any time.
    ``seed`` makes noise and jitter repeatable.
    """

    def __init__(
        self,
        fmt: str = WeightFormat.XK3190_TF0,
        interval_s: float = 0.1,
        kg: float = 0.0,
        *,
        noise: float = 0.0,
        never_settles: bool = False,
        link: str | os.PathLike[str] | None = None,
        seed: int | None = None,
    ) -> None:
        if not interval_s > 0:
            raise ValueError("interval_s must be positive")
        self.fmt = WeightFormat(fmt)
        self.interval_s = interval_s
        self._switch = SwitchablePort(link) if link is not None else None
        self._pty: PtyPort | None = None
        self._task: asyncio.Task[None] | None = None
        self._rng = random.Random(seed)
        self.kg = 0.0
        self.motion = False
        self._frame = b""
        self._shown: float | None = None
        self.silent = False
        """While True the indicator is powered but sends nothing (a cut TX wire)."""
        self.noise = noise
        self.never_settles = never_settles
        """While True the weight shown wanders by a few kg every frame and never settles."""
        self.frames_sent = 0
        """Good frames sent."""
        self.bursts_sent = 0
        """Frames sent damaged by ``noise``."""
        self.frames_skipped = 0
        """Frames not sent because the line was still backed up."""
        self.garbage_bytes = 0
        """Bytes of noise sent by `garbage`."""
        self.set_weight(kg)

    @property
    def noise(self) -> float:
        """Share of frames that a noise burst damages on the way, 0.0 to 1.0."""
        return self._noise

    @noise.setter
    def noise(self, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"noise must be between 0 and 1, got {value}")
        self._noise = float(value)

    def set_weight(self, kg: float, motion: bool = False) -> None:
        """Change what the display shows; the next frames carry it. Raises if unshowable."""
        self._frame = encode_weight(self.fmt, kg, motion)
        self.kg, self.motion = kg, motion

    async def start(self) -> None:
        """Create the pty (behind the link, if any) and start streaming.

        Idempotent while running; after `vanish`, `start` plugs a fresh indicator in.
        """
        if self._pty is None or self._pty.closed:
            if self._switch is not None:
                self._pty = await self._switch.plug()
            else:
                self._pty = PtyPort.open()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(
                self._stream(self._pty), name=f"weighbridge-sim {self._pty.port}"
            )

    @property
    def port(self) -> str:
        """The serial device path a driver opens: the link if there is one (always valid),
        else the pty's own path (raises before `start`)."""
        if self._switch is not None:
            return self._switch.port
        return self._require().port

    @property
    def running(self) -> bool:
        return self._pty is not None and not self._pty.closed

    @property
    def pty(self) -> PtyPort:
        return self._require()

    def write_raw(self, data: bytes) -> None:
        """Put arbitrary bytes on the line between the streamed frames."""
        self._require().write(data)

    def garbage(self, n_bytes: int) -> bytes:
        """Put ``n_bytes`` of line noise (any byte values) between two frames. Returns them.

        Noise is picked up by the cable, so it arrives even while the indicator is silent.
        """
        if n_bytes < 0:
            raise ValueError("n_bytes must not be negative")
        data = self._rng.randbytes(n_bytes)
        self._require().write(data)
        self.garbage_bytes += n_bytes
        return data

    async def stop(self) -> None:
        """Stop streaming, close the pty and remove the link, if any (idempotent)."""
        task = self._task
        self.vanish()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def vanish(self) -> None:
        """Pull the indicator out at once: a driver holding the port sees it disappear.

        With a link, the link goes too (as udev removes the by-id link), in the same step.
        """
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._switch is not None:
            self._switch.unplug()
        elif self._pty is not None:
            self._pty.close()

    def unplug(self) -> None:
        """Same as `vanish`: the USB adapter is pulled out."""
        self.vanish()

    async def replug(self) -> None:
        """Plug a fresh indicator in at the same path (pulling the old one out first)."""
        if self._switch is None:
            raise RuntimeError("replug needs a link: WeighbridgeSimulator(fmt, link=path)")
        self.vanish()
        await self.start()

    # -- streaming ---------------------------------------------------------------------

    async def _stream(self, pty: PtyPort) -> None:
        while not pty.closed:
            if not self.silent:
                if pty.idle:
                    frame = self._next_frame()
                    if self._noise and self._rng.random() < self._noise:
                        pty.write(self._damaged(frame))
                        self.bursts_sent += 1
                    else:
                        pty.write(frame)
                        self.frames_sent += 1
                else:
                    self.frames_skipped += 1
            await asyncio.sleep(self.interval_s)

    def _next_frame(self) -> bytes:
        if not self.never_settles:
            self._shown = None
            return self._frame
        motion = self.fmt is WeightFormat.TOLEDO_CONTINUOUS
        while True:
            shown = self.kg + self._rng.choice(_JITTER_KG)
            if shown == self._shown:
                continue
            try:
                frame = encode_weight(self.fmt, shown, motion)
            except ValueError:  # float noise needing too many decimals, or off the scale
                shown = float(round(shown))
                if shown == self._shown:
                    continue
                frame = encode_weight(self.fmt, shown, motion)
            self._shown = shown
            return frame

    def _damaged(self, frame: bytes) -> bytes:
        """``frame`` after a noise burst: 1 to 3 bytes after the STX replaced.

        No replacement is an STX, and the result never decodes, so the driver sees
        exactly one bad frame per burst.
        """
        while True:
            hit = bytearray(frame)
            for _ in range(self._rng.randint(1, 3)):
                hit[self._rng.randrange(1, len(hit))] = self._rng.choice(_NOT_STX)
            probe = weight_codec(self.fmt)
            probe.feed(bytes(hit))
            if not list(probe.frames()):
                return bytes(hit)

    async def __aenter__(self) -> WeighbridgeSimulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _require(self) -> PtyPort:
        if self._pty is None:
            raise RuntimeError("simulator not started: await start() first")
        if self._pty.closed:
            raise RuntimeError(f"simulated indicator on {self._pty.port} has vanished")
        return self._pty
