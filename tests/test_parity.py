"""Numerical parity with the official implementations: runs ../shared/parity/check.py for every fixture whose
method ovss implements (marker `parity`; `python -m pytest -m parity tests/test_parity.py`).

The kit (fixtures made by running the official code on deterministic random weights) lives beside the project
in the development workspace; in a user's clone it is absent and these tests are skipped with that reason."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KIT = os.environ.get("OVSS_PARITY_KIT", os.path.join(ROOT, "..", "shared", "parity"))
CHECK = os.path.join(KIT, "check.py")

# fixture -> ovss method it exercises
FIXTURE_METHOD = {
    "clip": "clip", "sclip": "sclip", "clearclip": "clearclip", "naclip": "naclip",
    "proxyclip_dino_vitb8": "proxyclip", "proxyclip_dino_vitb16": "proxyclip",
    "trident": "trident", "trident_samrefine": "trident",
    "cliptrase": "cliptrase", "cliptrase_336": "cliptrase", "cliptrase_voc20": "cliptrase",
    "cliptrase_336_voc20": "cliptrase",
    "cliper_elf": "cliper_elf", "cliper": "cliper",
}


def _fixtures() -> list[str]:
    if not os.path.exists(CHECK):
        return []
    return sorted(f[:-5] for f in os.listdir(os.path.join(KIT, "fixtures")) if f.endswith(".json") and not f.startswith("_"))


def _implemented(method: str) -> bool:
    from ovss.errors import InputError
    from ovss.methods import get_method
    try:
        get_method(method)
        return True
    except InputError:
        return False


@pytest.mark.parity
@pytest.mark.skipif(not os.path.exists(CHECK), reason=f"parity kit not found at {KIT} (it lives beside the project "
                                                       f"in the development workspace; set OVSS_PARITY_KIT)")
@pytest.mark.parametrize("fixture", _fixtures() or ["<none>"])
def test_parity(fixture):
    if fixture not in FIXTURE_METHOD:
        pytest.fail(f"fixture {fixture!r} has no ovss method mapping: add it to FIXTURE_METHOD")
    if not _implemented(FIXTURE_METHOD[fixture]):
        pytest.skip(f"method {FIXTURE_METHOD[fixture]!r} is not implemented in this build")
    proc = subprocess.run([sys.executable, CHECK, fixture], cwd=ROOT, capture_output=True, text=True, timeout=3000)
    out = proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    print(proc.stdout)
    assert proc.returncode == 0, f"parity FAILED for {fixture}:\n{out[-6000:]}"
    assert lines and lines[-1].startswith(f"{fixture} parity: agreement"), out[-3000:]
