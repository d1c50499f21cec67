"""A card reader on a pty: writes the frames a real reader sends when a card is shown.

The reader is silent until a card is presented, like the real thing; it cannot be asked
anything. Use `write_raw` to copy real-world quirks (noise on the line, half a frame,
a frame with a bad checksum) and `vanish` to pull the USB adapter out.

    sim = CardReaderSimulator("stx-hex-xor")
    await sim.start()
    reader = CardReader("B1-IN/reader", sim.port, 9600, "stx-hex-xor", on_card, on_health)
    ...
    sim.present("0100E2850E")
"""

from __future__ import annotations

from types import TracebackType

from drivers.codecs.card import CardFormat, encode_card
from simulators.pty import PtyPort

__all__ = ["CardReaderSimulator"]


class CardReaderSimulator:
    """Plays one serial card reader speaking ``fmt`` (see `drivers.codecs.card`)."""

    def __init__(self, fmt: str = CardFormat.STX_HEX_XOR) -> None:
        self.fmt = CardFormat(fmt)
        self._pty: PtyPort | None = None
        self.presented = 0
        """Frames sent by `present` so far."""

    async def start(self) -> None:
        """Create the pty; `port` is valid from now on. Idempotent while running."""
        if self._pty is None or self._pty.closed:
            self._pty = PtyPort.open()

    @property
    def port(self) -> str:
        """The serial device path a driver opens."""
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
        if repeat < 1:
            raise ValueError("repeat must be at least 1")
        frame = encode_card(self.fmt, card)
        self._require().write(frame * repeat)
        self.presented += repeat

    def write_raw(self, data: bytes) -> None:
        """Put arbitrary bytes on the line (noise, partial or corrupted frames)."""
        self._require().write(data)

    async def stop(self) -> None:
        """Close the pty (idempotent)."""
        self.vanish()

    def vanish(self) -> None:
        """Close the pty at once: a driver holding the port sees it disappear."""
        if self._pty is not None:
            self._pty.close()

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

    def _require(self) -> PtyPort:
        if self._pty is None:
            raise RuntimeError("simulator not started: await start() first")
        if self._pty.closed:
            raise RuntimeError(f"simulated reader on {self._pty.port} has vanished")
        return self._pty
