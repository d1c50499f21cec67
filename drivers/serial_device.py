"""Async drivers for the lane's serial devices: card readers and weighing indicators.

A driver opens its port with pyserial-asyncio-fast, feeds every received chunk to its
sans-IO codec (`drivers.codecs`) and hands decoded frames to a callback. It reports facts
and decides nothing: what a card or a weight means is the lane core's business.

Health, reported through ``on_health(health, reason)`` only when it changes:

- `Health.FAULTY` once per outage: the port cannot be opened, or it failed / vanished
  (read error, EOF). The driver closes it and reopens it forever, with capped jittered
  backoff (0.2 s doubling to 5 s by default), until ``run()`` is cancelled.
- `Health.OK` on the first valid frame after start-up or after an outage. A card reader
  is silent until a card is shown, so its OK arrives with the first card (reported
  before the card is dispatched).
- `Health.DEGRADED` when ``degraded_after`` bad frames arrive with no good frame
  between them: the port is up but what comes out is not usable (wrong format or baud
  rate, a noisy line).

Logging (Klipper and home-assistant habits): every line names the device; one ERROR per
outage, carrying a hex dump of the last bytes received (the flight recorder); one INFO
when the port is open again and one when frames decode again; repeated open failures and
drops go to DEBUG, with at most one WARNING about dropped frames per minute.

A "no frame for N seconds" check is not implemented yet; ``last_frame_at`` holds the
monotonic time of the last valid frame for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable, MutableMapping
from typing import Any, ClassVar, Generic, TypeVar

import serial
import serial_asyncio_fast

from drivers.codecs import FrameDecoder
from drivers.codecs.card import card_codec
from drivers.codecs.weight import StabilityTracker, WeightFrame, weight_codec
from drivers.health import Health

__all__ = ["CardReader", "OnHealth", "SerialDevice", "Weighbridge"]

log = logging.getLogger(__name__)

OnHealth = Callable[[Health, str], None]
T = TypeVar("T")


class _DeviceLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes every message with the device name and adds ``device`` to the record."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = self.extra or {}
        kwargs["extra"] = {**extra, **kwargs.get("extra", {})}
        return f"{extra.get('device')}: {msg}", kwargs


class _Link(asyncio.Protocol):
    """The asyncio protocol for one open period of the port."""

    def __init__(self, device: SerialDevice[Any], loop: asyncio.AbstractEventLoop) -> None:
        self._device = device
        self.lost: asyncio.Future[BaseException | None] = loop.create_future()

    def data_received(self, data: bytes) -> None:
        if not self.lost.done():
            self._device._data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


class SerialDevice(Generic[T]):
    """Port lifecycle, decoding, health and counters shared by the serial drivers.

    Subclasses give the codec and `_dispatch` (what to do with one decoded frame).
    """

    DROP_WARNING_INTERVAL_S: ClassVar[float] = 60.0

    def __init__(
        self,
        name: str,
        port: str,
        baudrate: int,
        codec: FrameDecoder[T],
        on_health: OnHealth,
        *,
        backoff_initial: float = 0.2,
        backoff_max: float = 5.0,
        degraded_after: int = 10,
        trace_len: int = 100,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if not name:
            raise ValueError("a device needs a name")
        if not port:
            raise ValueError(f"{name}: no port given")
        if baudrate <= 0:
            raise ValueError(f"{name}: baud rate must be positive, got {baudrate}")
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError(f"{name}: need 0 < backoff_initial <= backoff_max")
        if degraded_after < 1:
            raise ValueError(f"{name}: degraded_after must be at least 1")
        self.name = name
        self.port = port
        self.baudrate = baudrate
        self._codec = codec
        self._on_health = on_health
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._backoff = backoff_initial
        self._degraded_after = degraded_after
        self._clock = clock
        self._rng = rng or random.Random()
        self._log = _DeviceLog(log, {"device": name})
        self._trace: deque[tuple[float, str, bytes]] = deque(maxlen=trace_len)
        self._health: Health | None = None
        self._running = False
        self._open = False
        self._ever_opened = False
        self._outage_since: float | None = None
        self._reopen_logged = False
        self._failed_opens_in_outage = 0
        # counters
        self._frames = 0
        self._bytes = 0
        self._reconnects = 0
        self._open_failures = 0
        # drop accounting
        self._drops_seen = 0
        self._drops_since_frame = 0
        self._last_drop_warning: float | None = None
        self.last_frame_at: float | None = None
        """``clock()`` time of the last valid frame (for a future silence check)."""

    # -- public ------------------------------------------------------------------------

    @property
    def health(self) -> Health | None:
        """The last health reported (None before anything was reported)."""
        return self._health

    @property
    def is_open(self) -> bool:
        """True while the port is open and being read."""
        return self._open

    @property
    def counters(self) -> dict[str, Any]:
        """frames, bytes, dropped (by reason), reconnects, open_failures."""
        return {
            "frames": self._frames,
            "bytes": self._bytes,
            "dropped": dict(self._codec.dropped),
            "reconnects": self._reconnects,
            "open_failures": self._open_failures,
        }

    def dump_trace(self) -> str:
        """The flight recorder as text: one line per chunk, age in seconds, hex bytes."""
        if not self._trace:
            return "    (nothing received)"
        now = self._clock()
        lines = []
        for at, direction, data in self._trace:
            shown = data[:64].hex(" ")
            more = f" ... (+{len(data) - 64} bytes)" if len(data) > 64 else ""
            lines.append(f"    {at - now:+9.3f}s {direction} {shown}{more}")
        return "\n".join(lines)

    async def run(self) -> None:
        """Read the device until cancelled, reopening the port whenever it fails."""
        if self._running:
            raise RuntimeError(f"{self.name}: run() is already running")
        self._running = True
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self._session(loop)
                await asyncio.sleep(self._next_delay())
        finally:
            self._running = False
            self._open = False

    # -- port lifecycle ----------------------------------------------------------------

    async def _session(self, loop: asyncio.AbstractEventLoop) -> None:
        """One open period: open, read until the port fails, report it."""
        link = _Link(self, loop)
        try:
            transport, _ = await serial_asyncio_fast.create_serial_connection(
                loop, lambda: link, self.port, baudrate=self.baudrate, exclusive=True
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            self._open_failures += 1
            self._failed_opens_in_outage += 1
            self._fault(f"cannot open {self.port}: {exc}")
            return
        self._opened()
        try:
            exc = await link.lost
        except asyncio.CancelledError:
            port = transport.serial
            transport.abort()
            if port is not None:
                # Release the port (and its exclusive lock) before run() returns; the
                # transport's own close, run later in a thread, then finds it closed.
                with contextlib.suppress(Exception):
                    port.close()
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(link.lost), 1.0)
            self._closed()
            raise
        self._closed()
        self._fault(f"{self.port} lost: {exc or 'closed by the device side'}")

    def _opened(self) -> None:
        self._open = True
        self._drops_since_frame = 0
        self._on_open()
        if self._ever_opened:
            self._reconnects += 1
            outage = self._clock() - self._outage_since if self._outage_since else 0.0
            # INFO once per outage: a port that opens and fails again at once (a flapping
            # USB link) must not log a line per attempt.
            level = logging.DEBUG if self._reopen_logged else logging.INFO
            self._reopen_logged = True
            self._log.log(
                level,
                "reopened %s after %.1f s and %d failed attempt(s)",
                self.port,
                outage,
                self._failed_opens_in_outage,
            )
        else:
            self._log.info("opened %s at %d baud", self.port, self.baudrate)
        self._ever_opened = True
        self._failed_opens_in_outage = 0

    def _closed(self) -> None:
        self._open = False
        self._codec.reset()

    def _fault(self, reason: str) -> None:
        if self._health is Health.FAULTY:
            self._log.debug("still faulty: %s", reason)
            return
        self._outage_since = self._clock()
        self._reopen_logged = False
        self._log.error("%s; last bytes received:\n%s", reason, self.dump_trace())
        self._report(Health.FAULTY, reason)

    def _next_delay(self) -> float:
        delay = self._backoff
        self._backoff = min(self._backoff * 2, self._backoff_max)
        return delay / 2 + self._rng.uniform(0, delay / 2)  # equal jitter

    # -- data path ---------------------------------------------------------------------

    def _data_received(self, data: bytes) -> None:
        self._trace.append((self._clock(), "rx", bytes(data)))
        self._bytes += len(data)
        self._codec.feed(data)
        for item in self._codec.frames():
            self._note_drops()
            self._good_frame()
            try:
                self._dispatch(item)
            except Exception:
                self._log.exception("callback failed for %r", item)
        self._note_drops()

    def _good_frame(self) -> None:
        self._frames += 1
        self.last_frame_at = self._clock()
        self._drops_since_frame = 0
        self._backoff = self._backoff_initial
        if self._health is not Health.OK:
            if self._health is Health.FAULTY and self._outage_since is not None:
                self._log.info(
                    "recovered: frames decode again after %.1f s",
                    self._clock() - self._outage_since,
                )
                reason = "frames decode again"
            else:
                self._log.info("frames decode")
                reason = "frames decode"
            self._outage_since = None
            self._report(Health.OK, reason)

    def _note_drops(self) -> None:
        dropped = self._codec.dropped
        total = sum(dropped.values())
        new = total - self._drops_seen
        if new <= 0:
            return
        self._drops_seen = total
        self._drops_since_frame += new
        now = self._clock()
        if (
            self._last_drop_warning is None
            or now - self._last_drop_warning >= self.DROP_WARNING_INTERVAL_S
        ):
            self._last_drop_warning = now
            self._log.warning("dropped %d bad frame(s); totals %s", new, dict(dropped))
        else:
            self._log.debug("dropped %d bad frame(s); totals %s", new, dict(dropped))
        if self._drops_since_frame >= self._degraded_after and self._open:
            self._report(
                Health.DEGRADED,
                f"{self._drops_since_frame} bad frames and no good one "
                f"(wrong format or baud rate?); totals {dict(dropped)}",
            )

    def _report(self, health: Health, reason: str) -> None:
        if health is self._health:
            return
        self._health = health
        if health is Health.DEGRADED:
            self._log.warning("degraded: %s", reason)
        try:
            self._on_health(health, reason)
        except Exception:
            self._log.exception("on_health callback failed")

    # -- subclass hooks ----------------------------------------------------------------

    def _on_open(self) -> None:
        """Called each time the port opens, before any byte is read."""

    def _dispatch(self, item: T) -> None:
        raise NotImplementedError


class CardReader(SerialDevice[str]):
    """A serial card reader: calls ``on_card(card)`` with each card number (uppercase hex).

    A reader repeating a frame while the card stays in the field produces one call per
    frame; collapsing repeats is the lane core's decision, not the driver's.
    """

    def __init__(
        self,
        name: str,
        port: str,
        baudrate: int,
        fmt: str,
        on_card: Callable[[str], None],
        on_health: OnHealth,
        **options: Any,
    ) -> None:
        super().__init__(name, port, baudrate, card_codec(fmt), on_health, **options)
        self.fmt = fmt
        self._on_card = on_card

    def _dispatch(self, item: str) -> None:
        self._on_card(item)


class Weighbridge(SerialDevice[WeightFrame]):
    """A weighing indicator: calls ``on_weight(kg, stable)`` for every frame it decodes.

    ``stable`` follows `StabilityTracker` (``stable_samples`` identical readings in a row,
    or the indicator's motion flag clear). Readings from before an outage never count
    towards stability after it.
    """

    def __init__(
        self,
        name: str,
        port: str,
        baudrate: int,
        fmt: str,
        stable_samples: int,
        on_weight: Callable[[float, bool], None],
        on_health: OnHealth,
        **options: Any,
    ) -> None:
        super().__init__(name, port, baudrate, weight_codec(fmt), on_health, **options)
        self.fmt = fmt
        self._tracker = StabilityTracker(stable_samples)
        self._on_weight = on_weight

    def _on_open(self) -> None:
        self._tracker.reset()

    def _dispatch(self, item: WeightFrame) -> None:
        self._on_weight(item.kg, self._tracker.update(item))

