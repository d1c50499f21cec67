"""The simulated plate camera (``simulators.plate_camera``): what it reads, how often it
misses or misreads, and that it posts over real HTTP with its own token when a vehicle of
the simulated site drives onto the arrival loop. R12: the plate is what the guard sees."""

from __future__ import annotations

import asyncio
import hashlib
import random
from datetime import datetime
from pathlib import Path

from aiohttp import web

from gatectl.config import load_config
from simulators.plate_camera import LOOK_ALIKE, PlateCameraSimulator, misread
from simulators.site import ADMIN_TRAFFIC, DEMO_USERS, FLEET, REGISTERED_VEHICLES, LaneSpec, SimulatedSite

CAMERA_LANE = LaneSpec("B1-IN", "保税货物进区1号", "bonded", "in", "K001", plate_camera=True)
ADMIN_LANE = LaneSpec("A1-IN", "行政通道进区", "administrative", "in", "K004", plate_camera=True)


class Recorder:
    """A stand-in for the daemon's plates route on a real socket: keeps what it is sent."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, str, dict]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/api/v1/lanes/{lane}/plates", self._plate)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"127.0.0.1:{self.port}"

    async def _plate(self, request: web.Request) -> web.Response:
        self.posts.append((request.match_info["lane"], request.headers.get("Authorization", ""), await request.json()))
        return web.json_response({"status": "accepted"})

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def test_r12_a_misread_swaps_one_character_after_the_province_for_a_look_alike() -> None:
    rng = random.Random(3)
    for vehicle in (*FLEET, *ADMIN_TRAFFIC):
        for _ in range(20):
            wrong = misread(vehicle.plate, rng)
            assert len(wrong) == len(vehicle.plate) and wrong[0] == vehicle.plate[0]
            diffs = [(a, b) for a, b in zip(vehicle.plate, wrong) if a != b]
            assert len(diffs) == 1 and LOOK_ALIKE[diffs[0][0]] == diffs[0][1]
    assert misread("云", rng) == "云"  # nothing to misread


def test_r12_misses_and_misreads_come_at_their_rates_with_lower_confidence() -> None:
    camera = PlateCameraSimulator("B1-IN", miss_rate=0.1, misread_rate=0.05, rng=random.Random(11))
    plates = [v.plate for v in FLEET] * 200
    results = [(plate, camera.read(plate)) for plate in plates]
    missed = sum(1 for _, r in results if r is None)
    wrong = [r for plate, r in results if r is not None and r[0] != plate]
    right = [r for plate, r in results if r is not None and r[0] == plate]
    assert 0.07 * len(plates) < missed < 0.13 * len(plates)
    assert 0.03 * len(plates) < len(wrong) < 0.07 * len(plates)
    assert max(c for _, c in wrong) < min(c for _, c in right)
    assert all(0.0 <= c <= 1.0 for _, c in wrong + right)
    perfect = PlateCameraSimulator("B1-IN", miss_rate=0.0, misread_rate=0.0, rng=random.Random(1))
    assert all(perfect.read(p)[0] == p for p in plates[:50])  # type: ignore[index]


async def test_r12_the_sites_camera_posts_each_arrival_with_the_camera_token(tmp_path: Path) -> None:
    """A vehicle driving onto the arrival loop of a lane with a camera is posted to the
    plates route of the address the config names, with the ``camera`` user's bearer token
    (whose SHA-256 the config carries), as ``{"plate", "confidence", "captured_at"}``. The
    config also names the other users and the lanes' ``plate_camera``."""
    recorder = Recorder()
    listen = await recorder.start()
    sim = SimulatedSite(tmp_path, [CAMERA_LANE, ADMIN_LANE], travel_s=0.1, speed=10.0, weigh_interval_s=0.02,
                        camera_miss_rate=0.0, camera_misread_rate=0.0)
    await sim.start()
    try:
        path = sim.write_config(tmp_path / "site.yaml", api_listen=listen, users=DEMO_USERS)
        config = load_config(path)
        users = {u.role: (u.name, u.token_sha256) for u in config.local_api.users}
        assert set(users) == {"guard", "customs", "park", "camera"}
        camera_name, camera_token = DEMO_USERS["camera"]
        assert users["camera"] == (camera_name, hashlib.sha256(camera_token.encode()).hexdigest())
        assert [lane.plate_camera is not None for lane in config.lanes] == [True, True]
        assert {(v.card, v.plate) for v in config.administrative_vehicles} == {
            (r.card, r.plate) for r in REGISTERED_VEHICLES}

        before = datetime.now().astimezone()
        outcomes = await asyncio.gather(sim.lane("B1-IN").drive(FLEET[0], wait_for_lift_s=0.2),
                                        sim.lane("A1-IN").drive(ADMIN_TRAFFIC[0], wait_for_lift_s=0.2))
        assert outcomes == ["backed_out", "backed_out"]  # nobody lifts here
        for lane in sim.lanes:
            assert lane.camera is not None
            await lane.camera.drain()
        posts = sorted(recorder.posts, key=lambda p: p[0])
        assert [(lane, auth, body["plate"]) for lane, auth, body in posts] == [
            ("A1-IN", f"Bearer {camera_token}", ADMIN_TRAFFIC[0].plate),
            ("B1-IN", f"Bearer {camera_token}", FLEET[0].plate),
        ]
        for _, _, body in posts:
            assert set(body) == {"plate", "confidence", "captured_at"} and 0.88 <= body["confidence"] <= 1.0
            assert datetime.fromisoformat(body["captured_at"]) >= before
        assert sim.lane("B1-IN").camera.counts["accepted"] == 1  # type: ignore[union-attr]
    finally:
        await sim.stop()
        await recorder.stop()


async def test_r12_a_missed_plate_is_not_posted(tmp_path: Path) -> None:
    recorder = Recorder()
    listen = await recorder.start()
    camera = PlateCameraSimulator("B1-IN", miss_rate=1.0, misread_rate=0.0, delay_s=(0.0, 0.0))
    camera.connect(f"http://{listen}", "t")
    try:
        for vehicle in FLEET[:3]:
            camera.capture(vehicle.plate)
        await camera.drain()
        assert recorder.posts == [] and camera.counts["seen"] == 3 and camera.counts["missed"] == 3
    finally:
        await camera.close()
        await recorder.stop()
