"""torchrun with 2 gloo processes gives the single-process numbers; resume works across world sizes."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fakedata

TESTS = Path(__file__).parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _eval(args, nproc=1, cwd=None, check=True, factory="fakeseg:make"):
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    head = ([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
             f"--master_port={_port()}", "-m", "ovss"] if nproc > 1 else [sys.executable, "-m", "ovss"])
    p = subprocess.run(head + ["eval", "--factory", factory, "--no-progress", *args], env=env, cwd=cwd,
                       capture_output=True, text=True, timeout=240)
    if check:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist") / "data"
    fakedata.make_dataset(root, "voc21", n=5, sizes=[(24, 32), (30, 20), (16, 16), (24, 32), (20, 28)])
    return root


@pytest.mark.slow
def test_two_gloo_ranks_equal_single_process(data, tmp_path):
    common = ["--method", "fake", "--dataset", "voc21", "--data-root", str(data), "--set", "offset=1"]
    _eval(common + ["--out", str(tmp_path / "single")])
    p = _eval(common + ["--out", str(tmp_path / "dist")], nproc=2)
    assert "2 ranks" in p.stdout
    s = json.loads((tmp_path / "single/result.json").read_text())
    d = json.loads((tmp_path / "dist/result.json").read_text())
    np.testing.assert_array_equal(np.load(tmp_path / "single/confusion.npy"), np.load(tmp_path / "dist/confusion.npy"))
    assert d["world_size"] == 2 and s["world_size"] == 1
    assert d["summary"] == s["summary"] and d["all_metrics"] == s["all_metrics"] and d["per_class"] == s["per_class"]
    assert d["evaluated"] == s["evaluated"] == 5


@pytest.mark.slow
def test_resume_across_world_sizes(data, tmp_path):
    common = ["--method", "fake", "--dataset", "voc21", "--data-root", str(data), "--save-interval", "0"]
    _eval(common + ["--out", str(tmp_path / "ref")])
    out = ["--out", str(tmp_path / "r")]
    p = _eval(common + out + ["--set", "fail_after=1"], nproc=2, check=False)     # each rank stops after 1 image
    assert p.returncode != 0 and len(list((tmp_path / "r/state").glob("part-*.npz"))) == 2
    _eval(common + out + ["--set", "fail_after=1", "--resume"], check=False)    # 1 process: one more image
    # the last two images on two ranks again (fail_after=1 per rank = exactly what is left)
    _eval(common + out + ["--set", "fail_after=1", "--resume"], nproc=2)
    ref = np.load(tmp_path / "ref/confusion.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "r/confusion.npy"), ref)
    r = json.loads((tmp_path / "r/result.json").read_text())
    assert r["evaluated"] == 5 and r["resumed"]
