"""A weighing indicator on a pty, streaming the current weight like continuous mode.

Real indicators in continuous mode send the displayed weight several times a second
whether or not anybody listens; this one does the same every ``interval_s``. If the line
is backed up (nobody has read the port for a long time) a frame is skipped rather than
queued, so a driver that opens the port late does not get a backlog of stale weights.

    sim = WeighbridgeSimulator("xk3190-tf0", interval_s=0.05)
    await sim.start()
    sim.set_weight(31250)             # a lorry drives on
    sim.set_weight(31250, motion=True)  # toledo-continuous shows the motion flag
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

from drivers.codecs.weight import WeightFormat, encode_weight
from simulators.pty import PtyPort

__all__ = ["WeighbridgeSimulator"]


class WeighbridgeSimulator:
    """Plays one weighing indicator speaking ``fmt`` (see `drivers.codecs.weight`)."""

    def __init__(
        self,
        fmt: str = WeightFormat.XK3190_TF0,
        interval_s: float = 0.1,
        kg: float = 0.0,
    ) -> None:
        if not interval_s > 0:
            raise ValueError("interval_s must be positive")
        self.fmt = WeightFormat(fmt)
        self.interval_s = interval_s
        self._pty: PtyPort | None = None
        self._task: asyncio.Task[None] | None = None
        self.kg = 0.0
        self.motion = False
        self._frame = b""
        self.silent = False
        """While True the indicator is powered but sends nothing (a cut TX wire)."""
        self.frames_sent = 0
        self.frames_skipped = 0
        """Frames not sent because the line was still backed up."""
        self.set_weight(kg)

    def set_weight(self, kg: float, motion: bool = False) -> None:
        """Change what the display shows; the next frames carry it. Raises if unshowable."""
        self._frame = encode_weight(self.fmt, kg, motion)
        self.kg, self.motion = kg, motion

    async def start(self) -> None:
        """Create the pty and start streaming. Idempotent while running."""
        if self._pty is None or self._pty.closed:
            self._pty = PtyPort.open()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(
                self._stream(self._pty), name=f"weighbridge-sim {self._pty.port}"
            )

    @property
    def port(self) -> str:
        """The serial device path a driver opens."""
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

    async def stop(self) -> None:
        """Stop streaming and close the pty (idempotent)."""
        task = self._task
        self.vanish()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def vanish(self) -> None:
        """Close the pty at once: a driver holding the port sees it disappear."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._pty is not None:
            self._pty.close()

    async def _stream(self, pty: PtyPort) -> None:
        while not pty.closed:
            if not self.silent:
                if pty.idle:
                    pty.write(self._frame)
                    self.frames_sent += 1
                else:
                    self.frames_skipped += 1
            await asyncio.sleep(self.interval_s)

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
