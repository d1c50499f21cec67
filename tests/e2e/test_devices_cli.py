"""``gatectl devices``: what an ops engineer sees when probing a lane's devices on site."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from simulators.site import SimulatedSite, free_tcp_port

from .conftest import write_site_config


async def test_devices_probe_shows_inputs_cards_and_weights(tmp_path: Path, fast_sim: SimulatedSite) -> None:
    """Issue: per-device diagnostics. The probe prints each IO point's live value, the
    cards the reader decodes and whether the indicator settles, and exits 0."""
    config = write_site_config(fast_sim, tmp_path)
    lane = fast_sim.lane("B1-IN")
    lane.set_loop("arrival", True)
    lane.weigh(20000)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gatectl", "devices", "--config", str(config), "--seconds", "4",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    presenting = asyncio.create_task(_present_until_done(lane, proc))
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    presenting.cancel()
    text = out.decode()
    assert proc.returncode == 0, err.decode()
    assert "io1 (modbus-tcp" in text and ": OK" in text
    assert "B1-IN.arrival_loop = 1" in text and "B1-IN.safety_loop = 0" in text
    assert "card 0100E2850E" in text
    assert "20000 kg stable" in text


async def _present_until_done(lane, proc) -> None:
    while proc.returncode is None:
        lane.reader.present("0100E2850E")
        await asyncio.sleep(0.5)


async def test_devices_probe_exits_1_and_says_each_problem_once(tmp_path: Path) -> None:
    """#13 item 9: every device faulty (serial ports missing, nothing on the Modbus port):
    exit 1, one FAULTY line per device carrying its reason once, a one-line summary on
    stderr, no driver log lines and no traceback."""
    port = free_tcp_port()
    config = tmp_path / "site.yaml"
    config.write_text(f"""\
site: {{id: probe, name: 探测}}
journal: {{path: j.db}}
io_modules: {{io1: {{protocol: modbus-tcp, host: 127.0.0.1, port: {port}}}}}
staff: [{{card: "5A5A5A5A5A", name: 王保安}}]
lanes:
  - id: P1-IN
    name: 人员通道
    kind: personnel
    direction: in
    channel_no: "K009"
    card_reader: {{port: {tmp_path / "reader"}, format: ascii-line}}
    weighbridge: {{port: {tmp_path / "scale"}, format: xk3190-tf0}}
    points: {{arrival_loop: io1:di:0, safety_loop: io1:di:1, barrier_up: io1:di:2, barrier_down: io1:di:3,
              barrier_open: io1:coil:0, barrier_close: io1:coil:1}}
""", encoding="utf-8")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gatectl", "devices", "--config", str(config), "--seconds", "2",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    text, errors = out.decode(), err.decode()
    assert proc.returncode == 1, (text, errors)
    verdicts = [line for line in text.splitlines() if not line.startswith(" ")]
    assert len(verdicts) == 3 and all(": FAULTY: " in line for line in verdicts), text
    for device in ("reader", "scale"):
        assert (text + errors).count(f"cannot open {tmp_path / device}:") == 1, text + errors
    assert (text + errors).count(f"cannot connect to 127.0.0.1:{port}") == 1, text + errors
    assert errors.splitlines() == ["3 of 3 devices faulty or not answering: io1, P1-IN/card_reader, P1-IN/weighbridge"]
