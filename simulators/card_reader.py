"""A card reader on a pty: writes the frames a real reader sends when a card is shown.

The reader is silent until a card is presented, like the real thing; it cannot be asked
anything. Every fault a lane PC meets on a long serial cable can be scripted, from a test
or from a demo running in the same event loop:

- `garbage` puts line noise on the wire (random bytes, any value);
- `present_corrupt` sends a card's frame with a bad checksum (a bit hit on the way);
- `silent` cuts the reader's TX wire: `present` writes nothing;
- `vanish` / `unplug` pulls the USB adapter out, `replug` plugs a fresh one back in at the
  same path (needs ``link``: the simulator then sits behind a `SwitchablePort`, and
  `port` is that link, so the driver's config never changes);
- `write_raw` sends exact bytes (half a frame, a frame of another format...).

    sim = CardReaderSimulator("stx-hex-xor", link=tmp_path / "reader0")
    await sim.start()
    reader = CardReader("B1-IN/reader", sim.port, 9600, "stx-hex-xor", on_card, on_health)
    ...
    sim.present("0100E2850E")
    sim.unplug()
    await sim.replug()
"""

from __future__ import annotations

import os
import random
from types import TracebackType

from drivers.codecs.card import CardFormat, encode_card
from simulators.pty import PtyPort, SwitchablePort

__all__ = ["CardReaderSimulator", "corrupt_card_frame"]


def corrupt_card_frame(fmt: str, card: str) -> bytes:
    """``card``'s frame as a reader of ``fmt`` sends it, with its check broken.

    The STX formats get a checksum that does not match (the decoder drops it as
    "checksum"); ascii-line has no checksum, so one digit becomes a ``G`` ("format").
    """
    frame = bytearray(encode_card(fmt, card))
    f = CardFormat(fmt)
    if f is CardFormat.STX_HEX_XOR:
        check = int(frame[11:13], 16) ^ 0x01
        frame[11:13] = f"{check:02X}".encode("ascii")
    elif f is CardFormat.STX_BIN_BCC:
        frame[8] ^= 0x01
    else:
        frame[0] = ord("G")
    return bytes(frame)


class CardReaderSimulator:
    """Plays one serial card reader speaking ``fmt`` (see `drivers.codecs.card`).

    ``link``: a path for a `SwitchablePort` (the reader can then be unplugged and plugged
    back in at that path); without it the driver opens the pty itself and a vanished
    reader cannot come back. ``seed`` makes `garbage` repeatable.
    """

    def __init__(
        self,
        fmt: str = CardFormat.STX_HEX_XOR,
        *,
        link: str | os.PathLike[str] | None = None,
        seed: int | None = None,
    ) -> None:
        self.fmt = CardFormat(fmt)
        self._switch = SwitchablePort(link) if link is not None else None
        self._pty: PtyPort | None = None
        self._rng = random.Random(seed)
        self.silent = False
        """While True the reader's TX wire is cut: `present` and `present_corrupt` send nothing."""
        self.presented = 0
        """Frames sent by `present` so far (not those swallowed while `silent`)."""
        self.corrupted = 0
        """Frames sent by `present_corrupt` so far."""
        self.garbage_bytes = 0
        """Bytes of noise sent by `garbage` so far."""

    async def start(self) -> None:
        """Create the pty (behind the link, if any); `port` is valid from now on.

        Idempotent while running; after `vanish`, `start` plugs a fresh reader in.
        """
        if self._pty is not None and not self._pty.closed:
            return
        if self._switch is not None:
            self._pty = await self._switch.plug()
        else:
            self._pty = PtyPort.open()

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
        """The underlying pty (bytes the driver wrote, overrun count)."""
        return self._require()

    def present(self, card: str, repeat: int = 1) -> None:
        """Show ``card`` to the reader: it sends one frame, or ``repeat`` frames back to back."""
        frame = self._frames(encode_card(self.fmt, card), repeat)
        pty = self._require()
        if not self.silent:
            pty.write(frame)
            self.presented += repeat

    def present_corrupt(self, card: str, repeat: int = 1) -> bytes:
        """Show ``card`` on a bad line: its frame arrives with a broken check. Returns the bytes."""
        frame = self._frames(corrupt_card_frame(self.fmt, card), repeat)
        pty = self._require()
        if self.silent:
            return b""
        pty.write(frame)
        self.corrupted += repeat
        return frame

    def garbage(self, n_bytes: int) -> bytes:
        """Put ``n_bytes`` of line noise on the wire (any byte values). Returns them.

        Noise is picked up by the cable, so it arrives even while the reader is `silent`.
        """
        if n_bytes < 0:
            raise ValueError("n_bytes must not be negative")
        data = self._rng.randbytes(n_bytes)
        self._require().write(data)
        self.garbage_bytes += n_bytes
        return data

    def write_raw(self, data: bytes) -> None:
        """Put arbitrary bytes on the line (noise, partial or corrupted frames)."""
        self._require().write(data)

    async def stop(self) -> None:
        """Close the pty and remove the link, if any (idempotent)."""
        self.vanish()

    def vanish(self) -> None:
        """Pull the reader out at once: a driver holding the port sees it disappear.

        With a link, the link goes too (as udev removes the by-id link), in the same step.
        """
        if self._switch is not None:
            self._switch.unplug()
        elif self._pty is not None:
            self._pty.close()

    def unplug(self) -> None:
        """Same as `vanish`: the USB adapter is pulled out."""
        self.vanish()

    async def replug(self) -> None:
        """Plug a fresh reader in at the same path (pulling the old one out first).

        Needs ``link``: without one, the new pty would have a path no driver knows.
        """
        if self._switch is None:
            raise RuntimeError("replug needs a link: CardReaderSimulator(fmt, link=path)")
        self._pty = await self._switch.replug()

    async def __aenter__(self) -> CardReaderSimulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @staticmethod
    def _frames(frame: bytes, repeat: int) -> bytes:
        if repeat < 1:
            raise ValueError("repeat must be at least 1")
        return frame * repeat

    def _require(self) -> PtyPort:
        if self._pty is None:
            raise RuntimeError("simulator not started: await start() first")
        if self._pty.closed:
            raise RuntimeError(f"simulated reader on {self._pty.port} has vanished")
        return self._pty
