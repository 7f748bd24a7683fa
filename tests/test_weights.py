"""`ovss weights list/download/path` on a temporary cache, the offline message of every model, resumable downloads."""
from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading

import pytest

from ovss import weights as W

HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty ovss cache and Hugging Face cache, offline; returns (env for subprocesses, root)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "OVSS_"))}
    env.update(OVSS_CACHE=str(tmp_path / "ovss"), HF_HOME=str(tmp_path / "hf"), OVSS_OFFLINE="1")
    for k, v in env.items():
        if k.startswith(("HF_", "OVSS_")):
            monkeypatch.setenv(k, v)
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return env, tmp_path


def _ovss(env, *args):
    return subprocess.run([sys.executable, "-m", "ovss", *args], env=env, capture_output=True, text=True, timeout=60)


def _fake_hub_file(root, repo: str, filename: str, data: bytes) -> str:
    """The Hugging Face cache layout: refs/main -> snapshots/<commit>/<file> (a link to blobs/ in real life)."""
    base = root / "hf" / "hub" / ("models--" + repo.replace("/", "--"))
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(HUB_COMMIT)
    snap = base / "snapshots" / HUB_COMMIT
    snap.mkdir(parents=True)
    (snap / filename).write_bytes(data)
    return str(snap / filename)


def test_list_on_empty_cache_shows_every_model_missing(cache):
    env, _ = cache
    r = _ovss(env, "weights", "list")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["MODEL", "STATUS", "SIZE", "FILE", "SOURCE"]
    body = {ln.split()[0]: ln for ln in lines[1:1 + len(W.SPECS)]}
    assert list(body) == list(W.SPECS)
    assert all(" missing " in ln for ln in body.values())
    assert "~599 MB" in body["clip:ViT-B/16"] and "hf://timm/vit_base_patch16_clip_224.openai/" in body["clip:ViT-B/16"]
    assert body["sam:vit_b"].split()[-1] == "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"
    assert f"0 of {len(W.SPECS)} cached" in r.stdout


def test_list_for_a_method_shows_only_its_models_in_load_order(cache):
    env, _ = cache
    r = _ovss(env, "weights", "list", "--method", "trident", "-m", "sclip")
    assert r.returncode == 0, r.stderr
    models = [ln.split()[0] for ln in r.stdout.splitlines()[1:] if ln.strip() and not ln.startswith("0 of")]
    assert models == ["clip:ViT-B/16", "dino_vitb16", "sam:vit_b"]   # sclip adds nothing new
    assert "0 of 3 cached" in r.stdout
    bad = _ovss(env, "weights", "list", "--method", "nosuch")
    assert bad.returncode == 2 and "unknown method 'nosuch'" in bad.stderr and "Traceback" not in bad.stderr


def test_list_and_path_see_cached_partial_and_hub_files(cache):
    env, root = cache
    url_file = root / "ovss" / "weights" / "dino_vitbase8_pretrain.pth"
    url_file.parent.mkdir(parents=True)
    url_file.write_bytes(b"\0" * 2_500_000)
    (root / "ovss" / "weights" / "sam_vit_b_01ec64.pth.part").write_bytes(b"\0" * 1_200_000)
    hub = _fake_hub_file(root, "timm/vit_base_patch16_clip_224.openai", "open_clip_pytorch_model.bin", b"x" * 3000)

    rows = {r["model"]: r for r in json.loads(_ovss(env, "weights", "list", "--json").stdout)}
    assert rows["dino_vitb8"]["status"] == "cached" and rows["dino_vitb8"]["size_bytes"] == 2_500_000
    assert rows["dino_vitb8"]["path"] == str(url_file)
    assert rows["sam:vit_b"]["status"] == "partial" and rows["sam:vit_b"]["size"] == "1 MB of ~358 MB"
    assert rows["clip:ViT-B/16"]["status"] == "cached" and rows["clip:ViT-B/16"]["path"] == hub
    assert rows["clip:ViT-L/14"]["status"] == "missing" and rows["clip:ViT-L/14"]["path"] is None

    text = _ovss(env, "weights", "list").stdout
    line = next(ln for ln in text.splitlines() if ln.startswith("dino_vitb8 "))
    assert line.split()[1:4] == ["cached", "2", "MB"]
    assert f"2 of {len(W.SPECS)} cached" in text

    r = _ovss(env, "weights", "path", "dino_vitb8")
    assert r.returncode == 0 and r.stdout.strip() == str(url_file)
    assert _ovss(env, "weights", "path", "clip:ViT-B/16").stdout.strip() == hub
    assert _ovss(env, "weights", "path", "sam_vitb").returncode == 1       # alias of sam:vit_b; only a .part

    r = _ovss(env, "weights", "path", "dino_vits8")
    assert r.returncode == 1 and r.stdout == ""
    assert "`ovss weights download dino_vits8`" in r.stderr
    assert str(root / "ovss" / "weights" / "dino_deitsmall8_pretrain.pth") in r.stderr

    r = _ovss(env, "weights", "path", "dino_vitb99")
    assert r.returncode == 2 and "unknown model 'dino_vitb99'" in r.stderr and "dino_vitb8" in r.stderr

    # download of something cached is a no-op that prints the path
    r = _ovss(env, "weights", "download", "dino_vitb8")
    assert r.returncode == 0 and f"dino_vitb8: already cached, 2 MB: {url_file}" in r.stdout


@pytest.mark.parametrize("key", list(W.SPECS))
def test_offline_message_of_every_model_names_the_command(cache, key):
    with pytest.raises(W.MissingWeightsError) as e:
        W.resolve(key, None)
    msg = str(e.value)
    assert f"`ovss weights download {key}`" in msg
    assert "offline" in msg and W.SPECS[key].arg in msg and "'random'" in msg


def test_download_offline_exits_1_with_the_fix_per_model(cache):
    env, _ = cache
    r = _ovss(env, "weights", "download", "--method", "trident")
    assert r.returncode == 1
    for key in ("clip:ViT-B/16", "dino_vitb16", "sam:vit_b"):
        assert f"`ovss weights download {key}`" in r.stderr
    assert "3 of 3 downloads failed" in r.stderr
    assert "Traceback" not in r.stderr
    r = _ovss(env, "weights", "download")
    assert r.returncode == 2 and "--method M or --all" in r.stderr


def test_backbones_pass_the_offline_message_through(cache):
    """What a Segmenter user (and the app) sees: the same message, from the loader that needed the file."""
    import ovss
    from ovss.backbones.vfm import load_vfm
    with pytest.raises(W.MissingWeightsError, match=r"`ovss weights download clip:ViT-B/16`"):
        ovss.Segmenter(method="clip", classes=["cat", "dog"], clip="ViT-B/16", device="cpu")
    with pytest.raises(W.MissingWeightsError, match=r"`ovss weights download dino_vits16`"):
        load_vfm("dino_vits16", None)


def test_keys_for_method():
    assert W.keys_for_method("sclip") == ["clip:ViT-B/16"]
    assert W.keys_for_method("clip", clip="ViT-L-14") == ["clip:ViT-L/14"]
    assert W.keys_for_method("proxyclip") == ["clip:ViT-B/16", "dino_vitb8"]
    assert W.keys_for_method("trident", sam="vit_h") == ["clip:ViT-B/16", "dino_vitb16", "sam:vit_h"]
    assert W.keys_for_method("cliper") == ["clip:ViT-B/16", "sd21_base"]
    with pytest.raises(W.WeightsError, match="unknown CLIP model 'ViT-X'"):
        W.keys_for_method("sclip", clip="ViT-X")


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    data = bytes(range(256)) * 4000     # 1 MB
    ranges: list = []

    def do_GET(self):  # noqa: N802 - http.server API
        rng = self.headers.get("Range")
        type(self).ranges.append(rng)
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        body = self.data[start:]
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def test_download_resumes_a_part_file(cache, monkeypatch):
    _, root = cache
    monkeypatch.delenv("OVSS_OFFLINE")
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/w.pth"
        monkeypatch.setitem(W.SPECS, "test:w", W.WeightSpec("test:w", "a test file", "clip_weights", "w.pth", url=url))
        target = root / "ovss" / "weights" / "w.pth"
        target.parent.mkdir(parents=True)
        (root / "ovss" / "weights" / "w.pth.part").write_bytes(_RangeHandler.data[:300_000])
        assert W.status("test:w").state == "partial"
        path = W.download("test:w", progress=False)
    finally:
        srv.shutdown()
    assert path == str(target)
    assert _RangeHandler.ranges == ["bytes=300000-"]
    assert target.read_bytes() == _RangeHandler.data
    assert not os.path.exists(str(target) + ".part")
    st = W.status("test:w")
    assert st.state == "cached" and st.size == len(_RangeHandler.data)
