"""The status page in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

Against a 3-node mesh of real node processes: the page shows the three peers and the
device cards; the playground's demo job finishes; a file uploaded through the page comes
back byte for byte. Then a page over a node with 200 peers and 1,000 finished jobs stays
a few pages long. Screenshots go to ``artifacts/`` (git-ignored).
"""

from __future__ import annotations

import json
import queue
import random
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from poolai.node.launcher import NodeProcess, stop_all, wait_until
from poolai.node.logring import LogRing

playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (dev extra)")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed (scripts/test.sh installs it)", allow_module_level=True)

pytestmark = [pytest.mark.live, pytest.mark.timeout(300)]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
FAST = {"POOLAI_OVERLAY_SCALE": "0.05", "POOLAI_CAPACITY_HEARTBEAT": "1", "POOLAI_CAPACITY_EXPIRY": "5"}
GPU = {"gpus": [{"name": "Simulated A100", "memory_total": "80GiB", "memory_free": "52GiB",
                 "compute_capability": "8.0", "utilization": 37, "temperature_c": 56, "power_w": 212,
                 "power_limit_w": 400}]}
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"]


def status_url(node: NodeProcess) -> str:
    token = (node.data_dir / "admin.token").read_text().strip()
    return f"{node.api}/#token={token}"


@pytest.fixture
def browser():
    with playwright.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def open_page(browser: Any, url: str, errors: list[str]) -> Any:
    page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(url)
    playwright.expect(page.locator("#live")).to_have_text("live", timeout=15_000)
    return page


def test_page_on_a_three_node_mesh(tmp_path, browser):
    inventory = tmp_path / "gpu.json"
    inventory.write_text(json.dumps(GPU))
    a = NodeProcess(tmp_path / "a", env={**FAST, "POOLAI_INVENTORY_FILE": str(inventory)}).start()
    nodes = [a]
    try:
        nodes.append(NodeProcess(tmp_path / "b", "--bootstrap", a.addr, env=FAST).start())
        nodes.append(NodeProcess(tmp_path / "c", "--bootstrap", nodes[1].addr, env=FAST).start())
        others = {n.peer_id for n in nodes[1:]}
        wait_until(lambda: a.connected() == others, 30, "A connected to B and C")
        wait_until(lambda: a.get("/api/capacity")["peers"] == 3, 30, "A holding all three adverts")

        errors: list[str] = []
        page = open_page(browser, status_url(a), errors)
        expect = playwright.expect
        assert "#token=" not in page.url  # the token left the address bar (and the history)
        expect(page.locator("#peer-id")).to_have_text(a.peer_id)
        expect(page.locator("#lock")).to_have_text("admin")
        expect(page.locator("#peer-count")).to_have_text("2", timeout=15_000)
        # the dial-back checks' line: unknown until a round ends, then reachable on loopback
        expect(page.locator("#reach-line")).to_contain_text("reachab")
        for peer in others:
            expect(page.locator(f'#peer-rows tr[data-peer="{peer}"]')).to_have_count(1)
        expect(page.locator(".device.gpu")).to_have_count(1, timeout=15_000)
        expect(page.locator(".device.gpu h4")).to_have_text("GPU 0: Simulated A100")
        expect(page.locator(".device.cpu")).to_have_count(1)
        expect(page.locator("#device-note")).to_contain_text("2 other peer(s) advertising")
        expect(page.locator("#ring circle.peer").first).to_be_visible(timeout=30_000)

        # playground: the demo job, routed through the mesh, shows up finished
        if "jobs" not in a.status():
            pytest.skip("this node runs no jobs service: the demo job part cannot run")
        page.click("#demo-job")
        expect(page.locator("#demo-status")).to_contain_text("demo job …", timeout=30_000)
        done = page.locator('#finished-rows tr[data-state="ok"]')
        expect(done).to_have_count(1, timeout=150_000)
        expect(page.locator("#demo-status")).to_contain_text(": ok")
        job_id = done.get_attribute("data-job")
        assert a.get(f"/api/jobs/{job_id}")["result"]["status"] == "ok"

        # playground: a file through the page into the mesh and back, byte for byte
        if "storage" not in a.status():
            pytest.skip("this node runs no storage service: the file part cannot run")
        original = random.Random(7).randbytes(300_000)
        upload = tmp_path / "payload.bin"
        upload.write_bytes(original)
        page.set_input_files("#file-input", str(upload))
        page.click("#upload")
        expect(page.locator("#upload-status")).to_contain_text("stored payload.bin", timeout=90_000)
        with page.expect_download(timeout=90_000) as download:
            page.click("#my-files button.download")
        saved = tmp_path / "downloaded.bin"
        download.value.save_as(saved)
        assert saved.read_bytes() == original
        expect(page.locator("#upload-status")).to_contain_text("identical to the upload")
        file_id = page.locator("#my-files tr").first.get_attribute("data-file")
        placed = page.locator(f'#storage-body tr[data-file="{file_id}"]')
        expect(placed).to_have_count(1, timeout=15_000)  # with the demo job's files, listed with health

        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "status-page.png"), full_page=True)
        assert errors == []
    finally:
        stop_all(nodes)


# ----------------------------------------------------------------------------- a large node, faked


class FakeJobs:
    """The parts of the jobs service the page reads: 1,000 finished jobs, two active."""

    name = "jobs"

    def __init__(self, now: float) -> None:
        rng = random.Random(3)
        self.jobs = {}
        for i in range(1000):
            start = now - 5000 + 4 * i
            self.jobs[f"{i:016x}"] = {
                "job_id": f"{i:016x}", "phase": "done", "state": "done", "submitted_at": start,
                "finished_at": start + 2.5, "worker": f"12D3KooWpeer{rng.randrange(200):04d}",
                "result": {"status": "ok" if i % 50 else "failed", "timings": {"run_s": 0.4}},
                "requirements": {"device": "cpu"}}
        self.jobs["a" * 16] = {"job_id": "a" * 16, "phase": "assigned", "state": "running",
                               "submitted_at": now - 3, "worker": "12D3KooWpeer0001", "result": None,
                               "requirements": {"device": "gpu"}}
        held = [{"job_id": "b" * 16, "submitter": "12D3KooWpeer0042", "state": "running"}]
        self.executor = SimpleNamespace(
            snapshot=lambda: {"slots": 2, "running": 1, "queue_length": 0, "held": held})
        self.dir = Path("/nonexistent/jobs")  # the jobs API's routes are built, none is called

    def job_json(self, job: dict) -> dict:
        return job

    def status(self) -> dict:
        return {"submitted_by_state": {"done": 1000, "running": 1}}


class FakeNode:
    """Enough of :class:`~poolai.node.node.Node` for :func:`build_app` and the page."""

    def __init__(self, now: float) -> None:
        self.config = SimpleNamespace(api_host="127.0.0.1")
        self.admin_token = "t" * 43
        self.log_ring = LogRing()
        self.jobs = FakeJobs(now)
        self.overlay = self.capacity = self.credits = self.files = None
        self.now = now

    def status(self) -> dict:
        peers = [{"peer_id": f"12D3KooWpeer{i:04d}", "addrs": [f"/ip4/10.0.{i // 250}.{i % 250}/tcp/4001"]}
                 for i in range(200)]
        spread = [0x8100, 0x8300, 0x8700, 0x8F00, 0x7F00, 0x7D00, 0x7900, 0x7100, 0xC000, 0x2000, 0x9800,
                  0x6000]  # ring neighbours close by, long links across the ring
        links = [{"peer_id": p["peer_id"], "position": f"{spread[i]:04x}" + "0" * 12, "rtt_ms": 1.0 + i}
                 for i, p in enumerate(peers[:12])]
        return {"peer_id": "12D3KooWlargenode",
                "addrs": ["/ip4/93.184.216.34/tcp/4001/p2p/12D3KooWlargenode"],
                "version": "0.1.0", "uptime_s": 86400.0, "known_peers": 640, "peers": peers,
                "overlay": {"position": "8000000000000000", "size_estimate": 212.0, "incoming": 9,
                            "coordinate": {"error": 0.2}, "successors": links[:4], "predecessors": links[4:8],
                            "long": links[8:10], "proximity": links[10:12]},
                "jobs": self.jobs.status()}


def serve_in_thread(node: FakeNode) -> tuple[str, Any]:
    """Serve ``build_app(node)`` on hypercorn in a trio thread; returns (url, stop)."""
    from poolai.node.web.server import serve_api

    started: queue.Queue = queue.Queue()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_api, node, "127.0.0.1", 0)
            started.put((url, trio.lowlevel.current_trio_token(), nursery.cancel_scope))

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    url, token, scope = started.get(timeout=30)

    def stop() -> None:
        trio.from_thread.run_sync(scope.cancel, trio_token=token)
        thread.join(timeout=10)

    return url, stop


def test_page_stays_usable_with_200_peers_and_1000_finished_jobs(browser):
    node = FakeNode(now=time.time())
    url, stop = serve_in_thread(node)
    try:
        errors: list[str] = []
        page = open_page(browser, url, errors)
        expect = playwright.expect
        expect(page.locator("#peer-count")).to_have_text("200")
        expect(page.locator("#peer-rows tr")).to_have_count(15)
        expect(page.locator("#peer-pager")).to_contain_text("1–15 of 200")
        expect(page.locator("#finished-rows tr")).to_have_count(25)
        expect(page.locator("#job-pager")).to_contain_text("1–25 of 1000")
        expect(page.locator("#job-counts")).to_contain_text("980 ok")
        expect(page.locator("#active-rows tr")).to_have_count(2)
        expect(page.locator("#ring path.link")).to_have_count(12)
        # ring labels (eight neighbours sit close together) stay inside the drawing, none over another
        boxes = page.evaluate("""() => [...document.querySelectorAll('#ring text')].map(t => {
            const b = t.getBBox(); return [b.x, b.y, b.x + b.width, b.y + b.height]; })""")
        left, top, width, height = map(float, page.get_attribute("#ring", "viewBox").split())
        assert len(boxes) > 4
        assert all(left <= x0 and x1 <= left + width and top <= y0 and y1 <= top + height
                   for x0, y0, x1, y1 in boxes), boxes
        assert not any(a[0] < b[2] - 0.5 and b[0] < a[2] - 0.5 and a[1] < b[3] - 0.5 and b[1] < a[3] - 0.5
                       for i, a in enumerate(boxes) for b in boxes[i + 1:]), boxes
        page.locator("#job-pager button", has_text="older").click()
        expect(page.locator("#job-pager")).to_contain_text("26–50 of 1000")
        expect(page.locator("#finished-rows tr").first).to_have_attribute("data-job", f"{974:016x}")
        # the admin controls stay locked without the token, and a wrong one is refused
        expect(page.locator("#lock")).to_have_text("admin locked")
        assert page.locator("#drain").is_disabled()
        page.fill("#token-input", "wrong-token-" + "x" * 30)
        page.click("#token-form button")
        expect(page.locator("#admin-status")).to_contain_text("token refused")
        assert len(page.content()) < 200_000
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "status-page-large.png"), full_page=True)
        assert errors == [] or all("401" in e for e in errors)  # the refused token logs its 401
    finally:
        stop()


# ----------------------------------------------------------------------------- a day of history


def companion_with_a_day_of_history(now: float, data_dir: Path) -> Any:
    """A real companion service (not running) over a stand-in node, its history filled with a
    simulated day: peers coming and going, storage filling, bursts of serving, jobs, credits."""
    from poolai.node.companion.history import Sample
    from poolai.node.companion.service import CompanionService

    config = SimpleNamespace(telegram_token="123:" + "x" * 35, telegram_api_url="http://127.0.0.1:9",
                             alert_scale=1.0)
    host = SimpleNamespace(peer_id="12D3KooWlargenode", connected_peers=lambda: set())
    ctx = SimpleNamespace(config=config, data_dir=data_dir, host=host, book=None, peer_id=host.peer_id)
    service = CompanionService(ctx)  # type: ignore[arg-type]
    rng = random.Random(5)
    served = jobs = 0
    earned = 0.0
    for minute in range(24 * 60):
        t = now - (24 * 60 - minute) * 60
        busy = 8 <= (minute // 60) <= 20
        served += rng.randrange(0, 40 << 20) if busy else rng.randrange(0, 2 << 20)
        jobs += busy and rng.random() < 0.08
        earned += 0.004 * busy + (0.05 if rng.random() < 0.01 else 0)
        service.history.record(t, Sample(peers=6 + rng.randrange(-2, 3) + (minute // 240),
                                         stored=(3 << 30) + minute * (1 << 21), served=served, jobs=jobs,
                                         earned=earned))
    return service


def test_page_charts_a_day_of_history(tmp_path, browser):
    now = time.time()
    node = FakeNode(now)
    node.companion = companion_with_a_day_of_history(now, tmp_path)
    plain = node.status
    node.status = lambda: {**plain(), "companion": node.companion.status()}
    url, stop = serve_in_thread(node)
    try:
        errors: list[str] = []
        page = open_page(browser, url, errors)
        expect = playwright.expect
        charts = page.locator("#charts figure.chart-box")
        expect(charts).to_have_count(5, timeout=15_000)
        for series in ("peers", "stored", "served", "jobs", "earned"):
            line = page.locator(f'#charts figure[data-series="{series}"] svg.chart polyline.series')
            expect(line).to_have_count(1)
            assert len(line.get_attribute("points").split()) == 24 * 60
        expect(page.locator('#charts figure[data-series="jobs"] figcaption')).to_contain_text("in all")
        expect(page.locator("#streak")).to_contain_text("day(s) in a row")
        expect(page.locator("#milestones li.reached").first).to_be_visible()
        expect(page.locator("#telegram-state")).to_contain_text("not paired yet")
        page.locator('#history button.span[data-span="90d"]').click()
        expect(page.locator("#history button.span.on")).to_have_text("90 days")
        points = page.locator('#charts figure[data-series="peers"] polyline.series').get_attribute("points")
        assert 24 <= len(points.split()) <= 26  # by the hour
        page.locator('#history button.span[data-span="day"]').click()
        expect(page.locator("#history button.span.on")).to_have_text("day")
        ARTIFACTS.mkdir(exist_ok=True)
        page.locator("#history").screenshot(path=str(ARTIFACTS / "status-page-history.png"))
        page.screenshot(path=str(ARTIFACTS / "status-page-with-history.png"), full_page=True)
        assert errors == []
    finally:
        stop()
