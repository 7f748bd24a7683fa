"""`ovss app` as a real server for the end-to-end tests: the command line, offline, on empty caches, a tiny random
CLIP, a free loopback port. Used by test_app_browser.py and test_app_load.py."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def app_server(tmp: Path, extra_env: dict | None = None):
    """Start `ovss app --clip tiny-test --clip-weights random` and yield {"url", "tmp", "log", "proc"} once the page
    answers; stopped on exit."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "OVSS_", "GRADIO_"))}
    env.update(OVSS_OFFLINE="1", OVSS_CACHE=str(tmp / "ovss"), HF_HOME=str(tmp / "hf"), OVSS_TEXT_CACHE="0",
               GRADIO_ANALYTICS_ENABLED="False", GRADIO_TEMP_DIR=str(tmp / "gradio"), PYTHONUNBUFFERED="1",
               **(extra_env or {}))
    log = open(tmp / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "ovss", "app", "--method", "clip", "--clip", "tiny-test",
                             "--clip-weights", "random", "--device", "cpu", "--port", str(port),
                             "--max-pixels", "2000000"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    try:
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"ovss app exited with {proc.returncode}:\n{log.read()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail("ovss app did not answer within 180 s")
            time.sleep(0.5)
        yield {"url": url, "tmp": tmp, "log": tmp / "server.log", "proc": proc}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
