"""The local API around the status page, on a real in-process node: admin token, Host and Origin
checks, the page's JSON, OpenAPI and /metrics; plus the page view and metrics cores alone."""

from __future__ import annotations

import json
import logging
import re

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from starlette.routing import Route

from poolai.node import auth
from poolai.node import config as config_mod
from poolai.node.cli import main as cli
from poolai.node.node import Node, open_node
from poolai.node.web import metrics, view
from poolai.node.web.server import build_app

pytestmark = pytest.mark.timeout(60)
LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


def node_config(data_dir, **flags):
    return config_mod.load(data_dir, {"listen": LOOPBACK, "api_port": 0, **flags}, environ={})


def admin_requests(node) -> list[tuple[str, str]]:
    """(method, path) of every admin or state-changing route the node serves, path
    parameters filled in."""
    out = []
    for route in build_app(node).routes:
        if isinstance(route, Route) and (route.path.startswith(auth.ADMIN_PREFIX)
                                         or route.methods - auth.SAFE_METHODS):
            path = re.sub(r"\{[^}]+\}", "0123456789abcdef", route.path)
            out += [(method, path) for method in sorted(route.methods - {"HEAD"})]
    return out


def mutable_state(node) -> dict:
    """What any admin action could change."""
    jobs = node.jobs
    state = {"jobs": list(jobs.jobs), "held": list(jobs.executor.held),
             "draining": getattr(jobs, "draining", None), "paused": getattr(jobs, "paused", None)}
    state["storage"] = json.dumps(node.files.status(), sort_keys=True, default=str)
    return state


async def test_every_admin_or_state_changing_route_needs_the_token_and_changes_nothing_without_it(tmp_path):
    with trio.fail_after(50):
        async with open_node(node_config(tmp_path / "n")) as node, httpx.AsyncClient(
                base_url=node.api_url, timeout=20) as client:
            assert node.api_url.startswith("http://127.0.0.1:")  # loopback by default
            requests = admin_requests(node)
            paths = {p for _, p in requests}
            assert {"/api/admin/check", "/api/admin/drain", "/api/admin/jobs/pause", "/api/admin/jobs/resume",
                    "/api/admin/storage/quota", "/api/admin/playground/demo-job", "/api/files",
                    "/api/files/0123456789abcdef/pin", "/api/files/0123456789abcdef/unpin",
                    "/api/storage/repair"} <= paths
            body = {"drain": True, "quota": "1GiB", "job": {}, "files": {}}
            before = mutable_state(node)
            for method, path in requests:
                wrong = ({}, {"Authorization": "Bearer " + "x" * 43}, {"Authorization": node.admin_token})
                for headers in wrong:
                    r = await client.request(method, path, json=body, headers=headers)
                    assert r.status_code == 401, (method, path, headers, r.text)
                    assert r.headers["www-authenticate"].startswith("Bearer")
            # a job submitted without the token never starts
            r = await client.post("/api/admin/jobs", json={"job": {"mode": "forward"}, "files": {}})
            assert r.status_code == 401
            assert mutable_state(node) == before

            token = {"Authorization": f"Bearer {node.admin_token}"}
            r = await client.post("/api/admin/check", headers=token)
            assert r.status_code == 200 and r.json() == {"ok": True}
            r = await client.post("/api/admin/jobs/0123456789abcdef/cancel", headers=token)
            assert r.status_code == 404  # past the token check, into the jobs service
            r = await client.post("/api/admin/storage/quota", json={"quota": "lots"}, headers=token)
            assert r.status_code == 400 and "size" in r.json()["error"]
            for path in ("/api/admin/drain", "/api/admin/jobs/pause", "/api/admin/jobs/resume"):
                r = await client.post(path, json={}, headers=token)
                # 200 once the jobs service drains and pauses; until then a clear 501
                assert r.status_code in (200, 501), r.text
                if r.status_code == 501:
                    assert "no set_" in r.json()["error"]


async def test_browser_guards_host_and_origin(tmp_path):
    with trio.fail_after(50):
        async with open_node(node_config(tmp_path / "n")) as node, httpx.AsyncClient(
                base_url=node.api_url, timeout=20) as client:
            token = {"Authorization": f"Bearer {node.admin_token}"}
            # DNS rebinding: a page on evil.example whose name now points at 127.0.0.1
            r = await client.get("/api/status", headers={"Host": "evil.example"})
            assert r.status_code == 403
            # another site's form post, even with the token it cannot have
            r = await client.post("/api/admin/check", headers={**token, "Origin": "http://evil.example"})
            assert r.status_code == 403
            r = await client.post("/api/admin/check", headers={**token, "Origin": node.api_url})
            assert r.status_code == 200
            page = await client.get("/")
            assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
            assert '<script src="/static/app.js"' in page.text
            for name in ("app.js", "style.css"):
                assert (await client.get(f"/static/{name}")).status_code == 200
            assert (await client.get("/static/../node.py")).status_code == 404
            assert (await client.get("/static/secret.txt")).status_code == 404


async def test_page_json_openapi_log_and_metrics(tmp_path):
    with trio.fail_after(50):
        async with open_node(node_config(tmp_path / "n")) as node, httpx.AsyncClient(
                base_url=node.api_url, timeout=20) as client:
            logging.getLogger("poolai.test").warning("a warning for the page")
            page = (await client.get("/api/page")).json()
            assert page["node"]["peer_id"] == node.peer_id
            # every read route answers on a fresh node (the job list once failed on its own table)
            for path in ("/api/jobs", "/api/storage", "/api/credits", "/api/capacity", "/api/overlay"):
                r = await client.get(path)
                assert r.status_code == 200, (path, r.text)
            assert (await client.get("/api/jobs")).json() == {"jobs": []}
            assert page["node"]["reachability"]["state"] == "local"
            assert page["peers"] == {"total": 0, "offset": 0, "size": view.PEERS_PAGE, "items": []}
            assert page["overlay"]["position"] and page["devices"]["self"]["cpu_cores"] >= 1
            assert page["jobs"]["finished"]["total"] == 0
            assert any("No peer connected" in a["text"] for a in page["alerts"])
            assert any(e["msg"] == "a warning for the page" for e in page["log"])
            assert any(a["text"] == "poolai.test: a warning for the page" for a in page["alerts"])
            assert (await client.get("/api/page?peers=-1")).status_code == 400

            spec = (await client.get("/api/openapi.json")).json()
            assert spec["openapi"].startswith("3.")
            assert spec["paths"]["/api/admin/drain"]["post"]["security"] == [{"adminToken": []}]
            assert "get" in spec["paths"]["/api/status"]

            log = (await client.get("/api/log?limit=5")).json()
            assert 1 <= len(log["entries"]) <= 5 and log["counts"]["warning"] >= 1

            r = await client.get("/metrics")
            assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
            families = {f.name: f for f in text_string_to_metric_families(r.text)}
            assert families["poolai_peers_connected"].samples[0].value == 0
            info = families["poolai_info"].samples[0]
            assert info.labels["peer_id"] == node.peer_id
            links = {s.labels["kind"] for s in families["poolai_overlay_links"].samples}
            assert links == {"successors", "predecessors", "long", "proximity"}
            assert "poolai_log_messages" in families and "poolai_gossip_published" in families
            assert "poolai_jobs_here" in families


async def test_cli_reads_the_token_itself(tmp_path, capsys):
    data_dir = tmp_path / "n"
    with trio.fail_after(50):
        async with open_node(node_config(data_dir)) as node:
            assert cli.main(["--data-dir", str(data_dir), "node", "url"]) == 0
            printed = capsys.readouterr().out.strip()
            assert printed == node.status_url == f"{node.api_url}/#token={node.admin_token}"
            # a GET under /api/admin/ reaches the jobs service (404: no such job), not the 401 wall
            with pytest.raises(cli.CliError, match="404"):
                await trio.to_thread.run_sync(cli.fetch_local, data_dir,
                                              "/api/admin/jobs/0123456789abcdef/output", 10.0)


async def test_binding_beyond_loopback_is_explicit_and_needs_the_token_for_everything(tmp_path):
    with pytest.raises(config_mod.ConfigError, match="api_remote"):
        await Node(node_config(tmp_path / "a", api_host="0.0.0.0")).run()
    with trio.fail_after(50):
        async with open_node(node_config(tmp_path / "b", api_host="0.0.0.0", api_remote="true")) as node:
            base = node.api_url.replace("0.0.0.0", "127.0.0.1")
            async with httpx.AsyncClient(base_url=base, timeout=20) as client:
                assert (await client.get("/api/status", headers={"Host": "node.example"})).status_code == 401
                assert (await client.get("/metrics")).status_code == 401
                assert (await client.get("/")).status_code == 200  # the shell: no node data in it
                r = await client.get("/api/status", headers={"Authorization": f"Bearer {node.admin_token}",
                                                             "Host": "node.example"})
                assert r.status_code == 200 and r.json()["peer_id"] == node.peer_id


# ----------------------------------------------------------------------------- pure cores


def big_status(peers: int, now: float) -> tuple[dict, list[dict]]:
    status = {
        "peer_id": "12D3KooWself", "addrs": ["/ip4/192.168.1.5/tcp/4001/p2p/12D3KooWself"],
        "version": "0.1.0",
        "uptime_s": 100.0, "known_peers": peers, "api": "http://127.0.0.1:8740",
        "peers": [{"peer_id": f"12D3KooWpeer{i:04d}", "addrs": [f"/ip4/10.0.0.{i % 250}/tcp/4001"] * 8}
                  for i in range(peers)],
        "overlay": {"position": "00" * 8, "successors": [{"peer_id": "12D3KooWpeer0007", "position": "01" * 8,
                                                          "rtt_ms": 3.5}],
                    "predecessors": [], "long": [], "proximity": [], "size_estimate": 200.0},
    }
    submitted = [{"job_id": f"{i:016x}", "phase": "done", "state": "done", "submitted_at": now - 2000 + i,
                  "finished_at": now - 1999 + i, "worker": "12D3KooWpeer0001",
                  "result": {"status": "ok", "timings": {"run_s": 0.25, "wall_s": 1.5}},
                  "requirements": {"device": "cpu"}} for i in range(1000)]
    submitted.append({"job_id": "f" * 16, "phase": "assigned", "state": "running", "submitted_at": now - 5,
                      "worker": "12D3KooWpeer0002", "result": None, "requirements": {"device": "gpu"}})
    return status, submitted


def test_page_view_stays_small_with_200_peers_and_1000_finished_jobs():
    now = 1_700_000_000.0
    status, submitted = big_status(200, now)
    worker = {"slots": 1, "held": [{"job_id": "e" * 16, "submitter": "12D3KooWpeer0003", "state": "queued"}]}
    rows = view.job_rows(submitted, worker, now)
    doc = view.page_view(status, jobs={"rows": rows}, peers_offset=30, jobs_offset=990,
                         log=[{"seq": 1, "ts": now, "level": "warning", "logger": "x", "msg": "disk slow"}])
    assert doc["peers"]["total"] == 200 and len(doc["peers"]["items"]) == view.PEERS_PAGE
    assert doc["peers"]["offset"] == 30  # snapped to a page boundary
    first = view.page_view(status)["peers"]["items"][0]
    assert (first["peer_id"], first["rtt_ms"]) == ("12D3KooWpeer0007", 3.5)  # measured latency first
    jobs = doc["jobs"]
    assert (jobs["finished"]["total"], jobs["finished"]["offset"]) == (1000, 975)  # the last page
    assert len(jobs["finished"]["items"]) == view.PAGE_SIZE
    assert jobs["finished"]["items"][-1]["job_id"] == "0" * 16  # the oldest last
    assert jobs["counts"] == {"ok": 1000, "queued": 1, "running": 1}
    assert {j["role"] for j in jobs["active"]} == {"submitted", "run here"}
    newest = view.page_view(status, jobs={"rows": rows})["jobs"]["finished"]["items"][0]
    assert newest["job_id"] == f"{999:016x}" and newest["total_s"] == 1.0 and newest["run_s"] == 0.25
    assert doc["node"]["reachability"]["state"] == "private"
    assert doc["node"]["reach"] is None  # no reach section in this status
    status["reach"] = {"state": "private",
                       "line": "behind NAT (port-preserving mapping), not reachable directly",
                       "observed_ip": "198.51.100.7", "answers": 3, "age_s": 12.0,
                       "mapping": {"nat": True, "port_preserving": True, "address_dependent": False,
                                   "observed": ["/ip4/198.51.100.7/tcp/50000"]}}
    shown = view.page_view(status)["node"]["reach"]
    assert shown["line"].startswith("behind NAT") and shown["port_preserving"] is True
    assert shown["observed"] == ["/ip4/198.51.100.7/tcp/50000"]
    circuit = "/ip4/203.0.113.1/tcp/4001/p2p/R/p2p-circuit"
    status["reach"]["summary"] = f"behind NAT, reachable through relays {circuit}"
    status["reach"]["relay_addrs"] = [circuit]
    shown = view.page_view(status)["node"]["reach"]
    assert shown["line"].startswith("behind NAT, reachable through relays /ip4/203.0.113.1")
    assert shown["detail"].startswith("behind NAT (port-preserving") and len(shown["relay_addrs"]) == 1
    assert any(a["text"] == "x: disk slow" for a in doc["alerts"])
    assert len(json.dumps(doc)) < 40_000


def test_page_lists_a_file_by_name_and_says_when_its_shares_are_concentrated():
    counts = {"healthy": 0, "concentrated": 1, "degraded": 0, "lost": 0}
    files = [{"file_id": "ab" * 32, "size": 5, "k": 4, "n": 10, "added": 2,
              "name": "demo job inputs.safetensors", "health": counts, "spread": 1},
             {"file_id": "cd" * 32, "size": 5, "k": 4, "n": 10, "added": 1, "name": "", "health": None,
              "spread": None}]
    placed = view.page_view({"storage": {"files": 2}}, files=files)["storage"]["placed"]
    assert [(f["name"], f["health"], f["spread"]) for f in placed] == [
        ("demo job inputs.safetensors", "concentrated", 1), ("", "unchecked", None)]


def test_metrics_text_parses_and_escapes_hostile_labels():
    status = {
        "peer_id": 'evil"peer\nid\\', "version": "0.1.0", "uptime_s": 5, "peers": [{}, {}], "known_peers": 7,
        "capacity": {"peers": 3, "rejected": {'bad "sig"': 2}, "gossip": {
            "bytes_sent": 10, "rpcs_sent": 1, "published": 2, "accepted": 4, "rejected": {}, "banned": ["x"],
            "peers": 2}},
        "jobs": {"submitted_by_state": {"done": 4, "seeking": 1}, "slots": 2, "running": 1, "queue_length": 3,
                 "undelivered": 0, "run_by_state": {"running": 1}, "stats": {"accepted": 9}},
        "storage": {"used_bytes": 1 << 30, "quota_bytes": 10 << 30, "shares": 12, "nan": float("nan"),
                    "server": {"bytes_in": 5, "bytes_out": 7, "requests": 3}, "transport": None},
        "weird": {"stats": {"x": 1, "not a number": "n/a", "flag": True}},
    }
    text = metrics.render(metrics.collect(status, {"info": 3, "error": 1}))
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["poolai_info"].samples[0].labels["peer_id"] == 'evil"peer\nid\\'
    assert families["poolai_peers_connected"].samples[0].value == 2
    assert {s.labels["reason"]: s.value for s in families["poolai_capacity_adverts_rejected"].samples} == {
        'bad "sig"': 2}
    assert {s.labels["state"]: s.value for s in families["poolai_jobs_submitted"].samples} == {
        "done": 4, "seeking": 1}
    assert {s.labels["state"]: s.value for s in families["poolai_jobs_here"].samples} == {
        "running": 1, "queued": 3, "undelivered": 0}
    assert {s.labels["kind"]: s.value for s in families["poolai_storage_bytes"].samples} == {
        "used": 1 << 30, "quota": 10 << 30}
    assert {s.labels["direction"]: s.value for s in families["poolai_share_stream_bytes"].samples} == {
        "in": 5, "out": 7}
    assert [s.value for s in families["poolai_jobs_worker_events"].samples] == [9]
    assert [s.value for s in families["poolai_weird_events"].samples] == [1]
    levels = {s.labels["level"]: s.value for s in families["poolai_log_messages"].samples}
    assert levels == {"info": 3, "error": 1}
    # sections a node does not run leave no trace, and nothing breaks
    assert metrics.render(metrics.collect({})).startswith("# HELP poolai_info")


def test_metrics_carry_the_inbound_connection_counters():
    status = {"connections": {"inbound": 3, "outbound": 2, "inbound_cap": 128, "accepted": 40,
                              "refused_ip_rate": 7, "refused_peer_rate": 1, "refused_total_rate": 0,
                              "shed": 5}}
    families = {f.name: f for f in text_string_to_metric_families(metrics.render(metrics.collect(status)))}
    assert {s.labels["direction"]: s.value for s in families["poolai_connections"].samples} == {
        "inbound": 3, "outbound": 2}
    outcomes = {s.labels["outcome"]: s.value for s in families["poolai_inbound_connections"].samples
                if s.name.endswith("_total")}
    assert outcomes == {"accepted": 40, "refused_ip_rate": 7, "refused_peer_rate": 1,
                        "refused_total_rate": 0, "shed": 5}
