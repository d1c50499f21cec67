"""Async drivers for the lane's serial devices: card readers and weighing indicators.

A driver opens its port with pyserial-asyncio-fast, feeds every received chunk to its
sans-IO codec (`drivers.codecs`) and hands decoded frames to a callback. It reports facts
and decides nothing: what a card or a weight means is the lane core's business.

Health comes from what the device actually does, and is reported through
``on_health(health, reason)`` only when it changes. In order of precedence:

1. `Health.FAULTY`, the port is down: it cannot be opened, or it failed / vanished (read
   error, EOF, a USB adapter pulled out). The driver closes it and reopens it forever,
   with capped jittered backoff (0.2 s doubling to 5 s by default), until ``run()`` is
   cancelled. Opening a path again each time (not a file descriptor kept from before) is
   what lets a re-plugged adapter behind a stable udev link (``/dev/serial/by-id/...``)
   come back without a restart.
2. `Health.FAULTY`, silence: with ``silence_s`` set, no valid frame for that long while the
   port is open ("no frames for 3 s"). Meant for devices that stream (an indicator in
   continuous mode, on by default for `Weighbridge`); a card reader only speaks when a
   card is shown, so silence is no fault for it unless asked (off by default for
   `CardReader`). The clock starts when the port opens. A watchdog timer sleeps until
   the deadline (``loop.call_later``, moved lazily: a frame only updates a time stamp,
   the timer re-arms itself when it finds the deadline moved), so there is no polling.
3. `Health.DEGRADED`, noise: over the sliding window of the last ``error_window``
   frames that arrived in the last ``error_window_s`` seconds, at least
   ``error_min_bad`` were bad (checksum, format, stray bytes...) and they are more than
   ``error_rate`` of the window. Back to OK once the bad share is at most half of
   ``error_rate`` (or fewer than ``error_min_bad`` bad frames are left): the hysteresis
   keeps a line hovering around the threshold from flapping. Bad frames age out of the
   window, so a card reader that got a burst of noise and then sees no card recovers on
   its own, ``error_window_s`` later. DEGRADED never fails a lane by itself.
4. Unproven: the port has just (re)opened and nothing yet shows the device is there.
   The last report stands (FAULTY after an outage; nothing at start-up).
5. `Health.OK` otherwise. The port is *proven* by a valid frame, or, for a device
   without a silence check, by staying open for ``settle_s`` (1 s by default) without
   failing. Why the second way: a card reader is silent until a card is shown, so after
   an adapter is plugged back a frame may not come for hours; a lane held FAULTY all that
   time would refuse the first vehicle for no reason. An open that fails again within the
   first second (a flapping USB link, an adapter still enumerating) never reports OK, and
   1 s is far shorter than any vehicle's approach. A device with a silence check must
   prove itself with a frame, since it is expected to speak: declaring it OK on an open
   port and FAULTY again ``silence_s`` later would only flap.

Logging (Klipper and home-assistant habits): every line names the device; one ERROR per
outage (port down or silent), carrying a hex dump of the last bytes received (the flight
recorder); one INFO when the port is open again and one on recovery; repeated open
failures go to DEBUG; dropped frames and noise changes at most one WARNING per minute.
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
from drivers.stopping import wait_through

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


def _seconds(value: float) -> str:
    return f"{value:g} s"


class SerialDevice(Generic[T]):
    """Port lifecycle, decoding, health and counters shared by the serial drivers.

    Subclasses give the codec and `_dispatch` (what to do with one decoded frame).
    See the module docstring for what each health option means.
    """

    DROP_WARNING_INTERVAL_S: ClassVar[float] = 60.0
    """At most one WARNING per this many seconds about drops, and one about noise."""

    CLOSE_WAIT_S: ClassVar[float] = 1.0
    """How long a cancelled ``run()`` waits at most for its port's transport to close."""

    def __init__(
        self,
        name: str,
        port: str,
        baudrate: int,
        codec: FrameDecoder[T],
        on_health: OnHealth,
        *,
        silence_s: float | None = None,
        settle_s: float = 1.0,
        error_window: int = 20,
        error_window_s: float = 10.0,
        error_rate: float = 0.2,
        error_min_bad: int = 3,
        backoff_initial: float = 0.2,
        backoff_max: float = 5.0,
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
        if silence_s is not None and not silence_s > 0:
            raise ValueError(f"{name}: silence_s must be positive or None, got {silence_s}")
        if not settle_s >= 0:
            raise ValueError(f"{name}: settle_s must not be negative, got {settle_s}")
        if error_window < 1 or not error_window_s > 0:
            raise ValueError(f"{name}: error_window and error_window_s must be positive")
        if not 0 <= error_rate < 1:
            raise ValueError(f"{name}: error_rate must be in [0, 1), got {error_rate}")
        if not 1 <= error_min_bad <= error_window:
            raise ValueError(f"{name}: error_min_bad must be in 1..error_window")
        self.name = name
        self.port = port
        self.baudrate = baudrate
        self.silence_s = silence_s
        self.settle_s = settle_s
        self.error_window = error_window
        self.error_window_s = error_window_s
        self.error_rate = error_rate
        self.error_min_bad = error_min_bad
        self._codec = codec
        self._on_health = on_health
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._backoff = backoff_initial
        self._clock = clock
        self._rng = rng or random.Random()
        self._log = _DeviceLog(log, {"device": name})
        self._trace: deque[tuple[float, str, bytes]] = deque(maxlen=trace_len)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._health: Health | None = None
        self._reason: str | None = None
        self._running = False
        # the current open period
        self._open = False
        self._opened_at = 0.0
        self._proven = False
        self._silent = False
        self._noisy = False
        self._outcomes: deque[tuple[float, bool]] = deque(maxlen=error_window)  # (t, bad)
        self._silence_timer: asyncio.TimerHandle | None = None
        self._settle_timer: asyncio.TimerHandle | None = None
        self._expiry_timer: asyncio.TimerHandle | None = None
        # outages
        self._ever_opened = False
        self._outage_since: float | None = None
        self._reopen_logged = False
        self._failed_opens_in_outage = 0
        # counters
        self._frames = 0
        self._bytes = 0
        self._reconnects = 0
        self._open_failures = 0
        self._silence_faults = 0
        # rate-limited warnings
        self._drops_seen = 0
        self._last_drop_warning: float | None = None
        self._last_noise_warning: float | None = None
        self._noise_warned = False
        self.last_frame_at: float | None = None
        """``clock()`` time of the last valid frame, None before the first."""

    # -- public ------------------------------------------------------------------------

    @property
    def health(self) -> Health | None:
        """The last health reported (None before anything was reported)."""
        return self._health

    @property
    def health_reason(self) -> str | None:
        """The reason given with the last health report."""
        return self._reason

    @property
    def is_open(self) -> bool:
        """True while the port is open and being read."""
        return self._open

    @property
    def error_share(self) -> float:
        """Share of bad frames in the current window (0.0 when the window is empty)."""
        self._prune(self._clock())
        if not self._outcomes:
            return 0.0
        return sum(bad for _, bad in self._outcomes) / len(self._outcomes)

    @property
    def counters(self) -> dict[str, Any]:
        """What the driver saw, JSON-ready (the lane snapshot publishes it as is).

        frames, bytes, dropped (by reason, lifetime), reconnects, open_failures,
        silence_faults (times the silence check fired: no valid frame for
        ``silence_s`` while the port was open), health and
        health_reason (last report, None before one), last_frame_age_s (seconds since
        the last valid frame, None before one), error_rate (share of bad frames in the
        current window) and window_frames (frames in that window).
        """
        now = self._clock()
        share = self.error_share
        return {
            "frames": self._frames,
            "bytes": self._bytes,
            "dropped": dict(self._codec.dropped),
            "reconnects": self._reconnects,
            "open_failures": self._open_failures,
            "silence_faults": self._silence_faults,
            "health": None if self._health is None else self._health.value,
            "health_reason": self._reason,
            "last_frame_age_s": (
                None if self.last_frame_at is None else round(now - self.last_frame_at, 3)
            ),
            "error_rate": round(share, 3),
            "window_frames": len(self._outcomes),
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
        loop = self._loop = asyncio.get_running_loop()
        try:
            while True:
                await self._session(loop)
                await asyncio.sleep(self._next_delay())
        finally:
            self._running = False
            self._open = False
            self._cancel_timers()

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
            # Shielded: the cancellation of this wait must leave ``lost`` to tell when the
            # transport has closed the port (``_close``).
            exc = await asyncio.shield(link.lost)
        except asyncio.CancelledError:
            await self._close(transport, link)
            raise
        self._closed()
        self._fault(f"{self.port} lost: {exc or 'closed by the device side'}")

    async def _close(self, transport: serial_asyncio_fast.SerialTransport, link: _Link) -> None:
        """Close the port of a cancelled run, and wait (``CLOSE_WAIT_S`` at most) until
        the transport has closed it too and told the link: the transport closes in a task
        of its own, which must not be left pending on a loop about to close. A cancellation
        of this wait (a stop repeats them) does not cut it short; the caller raises it."""
        port = transport.serial
        if not transport.is_closing():
            transport.abort()
        if port is not None:
            # Release the port (and its exclusive lock) at once; the transport's own close,
            # run in a thread, then finds it closed.
            with contextlib.suppress(Exception):
                port.close()
        self._closed()  # (no health check fires on a port being closed)
        await wait_through([link.lost], self.CLOSE_WAIT_S)
        if not link.lost.done():
            self._log.error("the transport did not finish closing %s within %s; going on without it",
                            self.port, _seconds(self.CLOSE_WAIT_S))

    def _opened(self) -> None:
        now = self._clock()
        self._open = True
        self._opened_at = now
        self._proven = False
        self._silent = False
        self._noisy = False
        self._outcomes.clear()
        self._on_open()
        if self._ever_opened:
            self._reconnects += 1
            outage = now - self._outage_since if self._outage_since is not None else 0.0
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
        self._settle_timer = self._call_at(now + self.settle_s, self._settled)
        if self.silence_s is not None:
            self._silence_timer = self._call_at(now + self.silence_s, self._silence_check)

    def _closed(self) -> None:
        self._open = False
        self._silent = False
        self._cancel_timers()
        self._codec.reset()
        # A frame cut off by the close is the port's fault, not the line's: keep it out
        # of the error rate (it stays in the ``dropped`` totals as "truncated").
        self._drops_seen = sum(self._codec.dropped.values())

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

    # -- timers ------------------------------------------------------------------------

    def _call_at(self, deadline: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        assert self._loop is not None
        return self._loop.call_later(max(0.0, deadline - self._clock()), callback)

    def _cancel_timers(self) -> None:
        for timer in (self._silence_timer, self._settle_timer, self._expiry_timer):
            if timer is not None:
                timer.cancel()
        self._silence_timer = self._settle_timer = self._expiry_timer = None

    def _settled(self) -> None:
        """The port has stayed open for ``settle_s``."""
        self._settle_timer = None
        if not self._open:
            return
        self._backoff = self._backoff_initial  # this was no flapping link
        if self.silence_s is None and not self._proven:
            self._proven = True
            self._evaluate(f"port open for {_seconds(self.settle_s)} without failing")

    def _silence_check(self) -> None:
        """The silence deadline as last armed has passed; re-arm if a frame moved it."""
        self._silence_timer = None
        if not self._open or self.silence_s is None:
            return
        last = self._opened_at if self.last_frame_at is None else max(
            self.last_frame_at, self._opened_at
        )
        deadline = last + self.silence_s
        if self._clock() < deadline:
            self._silence_timer = self._call_at(deadline, self._silence_check)
            return
        # Stays disarmed until the next valid frame: one fault per silent period.
        self._silent = True
        self._silence_faults += 1
        bad = sum(bad for t, bad in self._outcomes if t >= last)
        detail = f" ({bad} bad frame(s) meanwhile)" if bad else ""
        self._fault(f"no frames for {_seconds(self.silence_s)}{detail}")

    def _expire(self) -> None:
        """The oldest frame of a noisy window has aged out: judge the window again."""
        self._expiry_timer = None
        if self._open:
            self._evaluate("noise aged out of the window")

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
        now = self._clock()
        self._frames += 1
        self.last_frame_at = now
        self._backoff = self._backoff_initial
        self._outcomes.append((now, False))
        self._proven = True
        if self._silent:
            self._silent = False
        if self.silence_s is not None and self._silence_timer is None:
            self._silence_timer = self._call_at(now + self.silence_s, self._silence_check)
        self._evaluate("frames decode")

    def _note_drops(self) -> None:
        dropped = self._codec.dropped
        total = sum(dropped.values())
        new = total - self._drops_seen
        if new <= 0:
            return
        self._drops_seen = total
        now = self._clock()
        self._outcomes.extend([(now, True)] * min(new, self.error_window))
        if (
            self._last_drop_warning is None
            or now - self._last_drop_warning >= self.DROP_WARNING_INTERVAL_S
        ):
            self._last_drop_warning = now
            self._log.warning("dropped %d bad frame(s); totals %s", new, dict(dropped))
        else:
            self._log.debug("dropped %d bad frame(s); totals %s", new, dict(dropped))
        self._evaluate("frames decode")

    # -- health ------------------------------------------------------------------------

    def _prune(self, now: float) -> None:
        horizon = now - self.error_window_s
        while self._outcomes and self._outcomes[0][0] < horizon:
            self._outcomes.popleft()

    def _judge_noise(self) -> str:
        """Update the noisy flag from the window (with hysteresis); describe the window."""
        now = self._clock()
        self._prune(now)
        total = len(self._outcomes)
        bad = sum(bad for _, bad in self._outcomes)
        share = bad / total if total else 0.0
        if self._noisy:
            if bad < self.error_min_bad or share <= self.error_rate / 2:
                self._noisy = False
        elif bad >= self.error_min_bad and share > self.error_rate:
            self._noisy = True
        if self._noisy and self._expiry_timer is None and self._outcomes:
            self._expiry_timer = self._call_at(
                self._outcomes[0][0] + self.error_window_s, self._expire
            )
        return f"{bad} of the last {total} frame(s) bad ({share:.0%}); totals {dict(self._codec.dropped)}"

    def _evaluate(self, ok_reason: str) -> None:
        """Report the health the device's conditions add up to (module docstring order)."""
        if not self._open or self._silent:
            return  # FAULTY, reported by _fault when the condition began
        window = self._judge_noise()
        if not self._proven:
            return
        if self._noisy:
            self._report(Health.DEGRADED, f"noisy line: {window}")
        elif self._health is Health.DEGRADED:
            self._report(Health.OK, f"line clean again: {window}")
        else:
            self._report(Health.OK, ok_reason)

    def _report(self, health: Health, reason: str) -> None:
        if health is self._health:
            return
        previous, self._health, self._reason = self._health, health, reason
        now = self._clock()
        if health is Health.OK:
            if previous is Health.FAULTY:
                outage = now - self._outage_since if self._outage_since is not None else 0.0
                self._log.info("recovered after %.1f s: %s", outage, reason)
            elif previous is Health.DEGRADED:
                # INFO only to close a WARNING that was logged: a line hovering around
                # the threshold gets one pair of lines per interval, not one per change.
                level = logging.INFO if self._noise_warned else logging.DEBUG
                self._log.log(level, "recovered: %s", reason)
            else:
                self._log.info("ready: %s", reason)
            self._outage_since = None
            self._noise_warned = False
        elif health is Health.DEGRADED:
            if (
                self._last_noise_warning is None
                or now - self._last_noise_warning >= self.DROP_WARNING_INTERVAL_S
            ):
                self._last_noise_warning = now
                self._noise_warned = True
                self._log.warning("degraded: %s", reason)
            else:
                self._log.debug("degraded: %s", reason)
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
    frame; collapsing repeats is the lane core's decision, not the driver's. Readers only
    speak when a card is shown, so ``silence_s`` defaults to None (silence is no fault)
    and an open port counts as OK after ``settle_s`` without a card.
    """

    def __init__(
        self,
        name: str,
        port: str,
        baudrate: int,
        fmt: str,
        on_card: Callable[[str], None],
        on_health: OnHealth,
        *,
        silence_s: float | None = None,
        **options: Any,
    ) -> None:
        super().__init__(
            name, port, baudrate, card_codec(fmt), on_health, silence_s=silence_s, **options
        )
        self.fmt = fmt
        self._on_card = on_card

    def _dispatch(self, item: str) -> None:
        self._on_card(item)


class Weighbridge(SerialDevice[WeightFrame]):
    """A weighing indicator: calls ``on_weight(kg, stable)`` for every frame it decodes.

    ``stable`` follows `StabilityTracker` (``stable_samples`` identical readings in a row,
    or the indicator's motion flag clear). Readings from before an outage never count
    towards stability after it. Indicators in continuous mode stream several frames a
    second, so ``silence_s`` defaults to 3 s (the config's ``weighbridge.silence_ms``).
    """

    DEFAULT_SILENCE_S: ClassVar[float] = 3.0

    def __init__(
        self,
        name: str,
        port: str,
        baudrate: int,
        fmt: str,
        stable_samples: int,
        on_weight: Callable[[float, bool], None],
        on_health: OnHealth,
        *,
        silence_s: float | None = DEFAULT_SILENCE_S,
        **options: Any,
    ) -> None:
        super().__init__(
            name, port, baudrate, weight_codec(fmt), on_health, silence_s=silence_s, **options
        )
        self.fmt = fmt
        self._tracker = StabilityTracker(stable_samples)
        self._on_weight = on_weight

    def _on_open(self) -> None:
        self._tracker.reset()

    def _dispatch(self, item: WeightFrame) -> None:
        self._on_weight(item.kg, self._tracker.update(item))
