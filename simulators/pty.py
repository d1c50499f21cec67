"""The master side of a pseudo-terminal, for simulators that play a serial device.

A driver opens `PtyPort.port` (the slave, e.g. ``/dev/pts/7``) exactly as it would open
``/dev/ttyUSB0``; the simulator writes the device's bytes into the master. The slave is
put in raw mode so every byte passes unchanged, and the simulator keeps its own slave
descriptor open, so the pty (and its settings) outlive a driver that closes and reopens
the port. `close` ends the pty: a driver holding the slave sees the port vanish (EIO),
like a USB adapter pulled out.

Writes never block the event loop: the master is non-blocking, and what the kernel will
not take now is queued and sent when the master becomes writable. Like a real device on
a line nobody reads, the queue is bounded and its oldest bytes are lost beyond that.

A pty cannot be created again at the same path, but a USB adapter plugged back in can:
udev gives it the same ``/dev/serial/by-id/...`` link. `SwitchablePort` copies that: a
fixed symlink that points at a fresh pty each time the device is plugged in, and does not
exist while it is pulled out. Give the driver the link, then ``unplug()`` and
``await replug()`` as often as the test or demo likes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from pathlib import Path

__all__ = ["PtyPort", "SwitchablePort"]


class PtyPort:
    """One pty pair; construct inside a running event loop with `PtyPort.open`."""

    MAX_PENDING = 16 * 1024
    """Bytes queued in user space while the kernel buffer is full; older ones are lost."""
    MAX_RECEIVED = 4 * 1024
    """Bytes kept of what the driver wrote to the device (most recent ones)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, master: int, slave: int) -> None:
        self._loop = loop
        self._master: int | None = master
        self._slave: int | None = slave
        self._port = os.ttyname(slave)
        self._pending = bytearray()
        self._writer_armed = False
        self.received = bytearray()
        """What the driver side wrote, newest `MAX_RECEIVED` bytes."""
        self.bytes_written = 0
        self.overruns = 0
        """How often queued bytes were thrown away because nobody read them."""
        loop.add_reader(master, self._on_readable)

    @classmethod
    def open(cls) -> PtyPort:
        """Open a new raw pty pair; must be called from a coroutine or loop callback."""
        loop = asyncio.get_running_loop()
        master, slave = os.openpty()
        try:
            tty.setraw(slave)
            os.set_blocking(master, False)
            return cls(loop, master, slave)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise

    @property
    def port(self) -> str:
        """Path of the slave device, for the driver to open."""
        return self._port

    @property
    def closed(self) -> bool:
        return self._master is None

    @property
    def idle(self) -> bool:
        """True when nothing is queued behind a full kernel buffer."""
        return not self._pending

    def write(self, data: bytes) -> None:
        """Send bytes to whoever has the slave open. Never blocks; raises if closed."""
        if self._master is None:
            raise RuntimeError(f"pty {self._port} is closed")
        if not data:
            return
        if self._pending:
            self._queue(data)
            return
        try:
            n = os.write(self._master, data)
        except BlockingIOError:
            n = 0
        except OSError:  # the pty is being torn down: the bytes are lost, as on a cut line
            return
        self.bytes_written += n
        if n < len(data):
            self._queue(data[n:])

    def close(self) -> None:
        """End the pty (idempotent). The master goes first, so the slave sees a hang-up."""
        master, slave = self._master, self._slave
        self._master = self._slave = None
        self._pending.clear()
        if master is not None:
            self._loop.remove_reader(master)
            if self._writer_armed:
                self._loop.remove_writer(master)
                self._writer_armed = False
            os.close(master)
        if slave is not None:
            os.close(slave)

    def _queue(self, data: bytes) -> None:
        self._pending += data
        excess = len(self._pending) - self.MAX_PENDING
        if excess > 0:
            del self._pending[:excess]
            self.overruns += 1
        if not self._writer_armed and self._master is not None:
            self._loop.add_writer(self._master, self._on_writable)
            self._writer_armed = True

    def _on_writable(self) -> None:
        if self._master is None:
            return
        try:
            n = os.write(self._master, self._pending)
        except BlockingIOError:
            return
        except OSError:
            n = len(self._pending)
        self.bytes_written += n
        del self._pending[:n]
        if not self._pending:
            self._loop.remove_writer(self._master)
            self._writer_armed = False

    def _on_readable(self) -> None:
        if self._master is None:
            return
        try:
            data = os.read(self._master, 4096)
        except BlockingIOError:
            return
        except OSError:  # EIO: no slave side any more; stop polling rather than spin
            data = b""
        if not data:
            self._loop.remove_reader(self._master)
            return
        self.received += data
        excess = len(self.received) - self.MAX_RECEIVED
        if excess > 0:
            del self.received[:excess]


class SwitchablePort:
    """A stable path (symlink) in front of a pty that can be pulled out and plugged back.

    While plugged in, ``link`` points at the slave of the current `PtyPort`; while pulled
    out it does not exist, so an open fails with ENOENT as it does when udev removed the
    by-id link. Pulling out closes the pty first (a driver holding it sees EIO) and
    removes the link in the same step, so a driver retrying in between can never open a
    pty that someone else created meanwhile under the freed pts number. The link is
    always replaced atomically (rename over it).
    """

    def __init__(self, link: str | os.PathLike[str]) -> None:
        self.link = Path(link)
        self._pty: PtyPort | None = None
        self.plugs = 0
        """How many times a device was plugged in (the first `plug` included)."""

    @property
    def port(self) -> str:
        """The path a driver opens: the link, valid across replugs."""
        return str(self.link)

    @property
    def plugged(self) -> bool:
        return self._pty is not None and not self._pty.closed

    @property
    def pty(self) -> PtyPort:
        """The pty behind the link now; raises while unplugged."""
        if self._pty is None or self._pty.closed:
            raise RuntimeError(f"nothing plugged in at {self.link}")
        return self._pty

    async def plug(self) -> PtyPort:
        """Plug a device in: a fresh pty behind the link. No-op if one is plugged in."""
        if self.plugged:
            assert self._pty is not None
            return self._pty
        pty = PtyPort.open()
        try:
            tmp = self.link.with_name(self.link.name + ".plugging")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(pty.port)
            os.replace(tmp, self.link)
        except BaseException:
            pty.close()
            raise
        self._pty = pty
        self.plugs += 1
        return pty

    def unplug(self) -> None:
        """Pull the device out: close its pty and remove the link (idempotent)."""
        if self._pty is not None:
            self._pty.close()
            self._pty = None
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()

    async def replug(self) -> PtyPort:
        """Pull the device out (if it is in) and plug a fresh one in at the same path."""
        self.unplug()
        return await self.plug()
