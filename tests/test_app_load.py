"""The app under load: `ovss app` (tiny random CLIP, offline) on a free loopback port, 8 concurrent requests from a
bounded client (8 threads, one request each, 120 s timeout), mixed methods and one unreadable image. Every request
is answered — the bad one with its message —, the server keeps running, and its memory stays bounded across a
second wave (the Segmenters and models it keeps are capped: AppConfig.cache_size, api.MODEL_CACHE_LIMIT).

Figures (requests, answered, max latency, peak memory) are printed and written to $OVSS_TEST_ARTIFACTS/load.json."""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from appserver import app_server

pytest.importorskip("gradio", reason="gradio is missing (pip install 'ovss[app]')")
gradio_client = pytest.importorskip("gradio_client", reason="gradio_client is missing (it comes with gradio)")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(REPO, "src", "ovss", "resources", "samples")
ARTIFACTS = os.environ.get("OVSS_TEST_ARTIFACTS") or os.path.join(REPO, "artifacts", "app")
pytestmark = [pytest.mark.timeout(600)]

# (image, classes, method): mixed methods, one unreadable upload
REQUESTS = [("frog.jpg", "frog, water, turtle", "clip"), ("horses_1024.jpg", "sky, hill, horse, grass", "sclip"),
            ("bear_case.jpg", "river, grass, bear", "maskclip"), ("frog.jpg", "frog, water", "clearclip"),
            ("BROKEN", "cat, dog", "sclip"), ("horses_1024.jpg", "sky, horse", "naclip"),
            ("bear_case.jpg", "bear, ground", "clip"), ("frog.jpg", "frog, snail", "cliper_elf")]


def _memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in kB (Linux)."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for ln in f:
            k, _, v = ln.partition(":")
            fields[k] = v
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("app_load")
    broken = tmp / "holiday.jpg"
    broken.write_bytes(b"this is not a JPEG" * 50)
    with app_server(tmp, {"OVSS_MODEL_CACHE": "4"}) as srv:
        yield dict(srv, broken=str(broken))


def _wave(server) -> list[dict]:
    """8 concurrent requests (one client per thread, like 8 browser tabs); each returns status and latency."""
    from gradio_client import Client, handle_file

    def one(req):
        image, classes, method = req
        path = server["broken"] if image == "BROKEN" else os.path.join(SAMPLES, image)
        client = Client(server["url"], verbose=False)
        t0 = time.perf_counter()
        params = {"headers": ["parameter", "value", "default", "type", "what it does"], "data": []}  # defaults
        status, overlay, *_ = client.predict(handle_file(path), classes, method, "tiny-test", "none", params,
                                             api_name="/on_run")
        text = status.get("value") if isinstance(status, dict) else status
        return {"method": method, "image": image, "status": text, "overlay": overlay,
                "latency_s": time.perf_counter() - t0}

    with ThreadPoolExecutor(max_workers=len(REQUESTS)) as pool:
        futures = [pool.submit(one, r) for r in REQUESTS]
        return [f.result(timeout=300) for f in futures]


def test_eight_concurrent_requests_are_all_answered_with_bounded_memory(server):
    pid = server["proc"].pid
    rss0, _ = _memory_kb(pid)
    first = _wave(server)
    rss1, hwm1 = _memory_kb(pid)
    second = _wave(server)
    rss2, hwm2 = _memory_kb(pid)
    assert server["proc"].poll() is None, "the server died"
    for res in (first, second):
        assert len(res) == 8
        for r in res:
            if r["image"] == "BROKEN":
                assert r["status"].startswith("**Error:**") and "holiday.jpg: not a readable image" in r["status"]
                assert r["overlay"] is None
            else:
                assert r["status"].startswith("**Done**"), r["status"]
                assert f"{r['method']} on tiny-test" in r["status"] and r["overlay"]
    # memory: the second wave (same methods: Segmenters and models reused or re-built within the caps) does not
    # grow the peak by more than 300 MB, and the whole server stays under 4 GB
    assert hwm2 - hwm1 < 300_000, (hwm1, hwm2)
    assert hwm2 < 4_000_000
    figures = {"requests": 16, "answered": sum(len(w) for w in (first, second)),
               "bad_image_answered_with_message": True,
               "max_latency_s": round(max(r["latency_s"] for r in first + second), 2),
               "rss_mb": {"start": rss0 // 1024, "after_wave_1": rss1 // 1024, "after_wave_2": rss2 // 1024},
               "peak_mb": {"after_wave_1": hwm1 // 1024, "after_wave_2": hwm2 // 1024}}
    os.makedirs(ARTIFACTS, exist_ok=True)
    with open(os.path.join(ARTIFACTS, "load.json"), "w") as f:
        json.dump(figures, f, indent=2)
    print(json.dumps(figures))
    log = open(server["log"]).read()
    assert "Traceback" not in log, log[-3000:]
