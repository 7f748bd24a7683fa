"""Shared test setup: an isolated OVSS cache for the whole session, and the random-weight CLIP models built once.

The text-embedding cache works inside the session (so a class list is encoded once), but never touches the
user's real cache.
"""
from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_ovss_cache(tmp_path_factory):
    """OVSS_CACHE -> a session temp folder (text-embedding cache and URL downloads)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("OVSS_CACHE", str(tmp_path_factory.mktemp("ovss_cache")))
    yield
    mp.undo()


# The CLIP fixtures live in ovss.api's model cache, which Segmenters share: built once, and rebuilt only if a test
# clears that cache (so `Segmenter(...).method.clip is tiny_clip` holds in every test).
@pytest.fixture
def tiny_clip():
    """The 'tiny-test' CLIP with deterministic random weights (fp32, CPU), shared with every Segmenter."""
    import torch

    from ovss import api
    from ovss.backbones.clip import load_clip
    return api._cached(("clip", "tiny-test", "random", "cpu", torch.float32),
                       lambda: load_clip("tiny-test", "random", torch.device("cpu"), torch.float32))


@pytest.fixture
def vitb16():
    """Full-size CLIP ViT-B/16 with deterministic random weights, built once per session (slow tests only)."""
    import torch

    from ovss import api
    from ovss.backbones.clip import load_clip
    return api._cached(("clip", "ViT-B/16", "random", "cpu", torch.float32),
                       lambda: load_clip("ViT-B/16", "random", torch.device("cpu"), torch.float32))


@pytest.fixture(scope="session")
def smooth_rgb() -> np.ndarray:
    """A deterministic 40 x 56 RGB uint8 image with structure (blocks + gradient), not plain noise."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(5, 7, 3)).astype(np.float64)
    img = np.kron(base, np.ones((8, 8, 1)))
    img += np.linspace(0, 30, 56)[None, :, None]
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def voc21_set(tmp_path_factory):
    """20 small synthetic VOC21 samples of 4 sizes in the mmseg layout (the evaluation-loop tests)."""
    import fakedata
    root = tmp_path_factory.mktemp("voc21_set") / "d"
    fakedata.make_dataset(root, "voc21", n=20, sizes=[(24, 32), (30, 20), (16, 16), (28, 36)] * 5, seed=3)
    return root
