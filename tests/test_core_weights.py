"""Weights resolution for CLIP: random / path / missing path / offline download, and clear errors for bad files."""
from __future__ import annotations

import os

import pytest
import torch

import ovss
from ovss import weights as W
from ovss.errors import OvssError, WeightsError


def test_resolve_random_and_existing_path(tmp_path):
    assert W.resolve("clip:ViT-B/16", "random") == W.RANDOM
    f = tmp_path / "ViT-B-16.pt"
    f.write_bytes(b"x")
    assert W.resolve("clip:ViT-B/16", f) == str(f)
    assert W.resolve("clip:ViT-B/16", str(f)) == str(f)


def test_resolve_missing_path_names_it_and_the_fix():
    with pytest.raises(WeightsError) as e:
        W.resolve("clip:ViT-B/16", "/nonexistent")
    msg = str(e.value)
    assert "'/nonexistent'" in msg and "no such file" in msg
    assert "clip_weights" in msg and "ViT-B-16.pt" in msg and "ovss weights download clip:ViT-B/16" in msg
    assert isinstance(e.value, OvssError)


def test_unknown_key():
    with pytest.raises(WeightsError, match="unknown model 'clip:ViT-Z/1'"):
        W.spec("clip:ViT-Z/1")
    assert W.spec("sam_vitb").key == "sam:vit_b"


def test_weights_identity_changes_with_the_file(tmp_path):
    assert W.identity(W.RANDOM) == "random:0" and W.identity(W.RANDOM, 3) == "random:3"
    f = tmp_path / "w.pt"
    f.write_bytes(b"abc")
    a = W.identity(str(f))
    f.write_bytes(b"abcd")
    assert W.identity(str(f)) != a and str(tmp_path) in a


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No network, an empty Hugging Face cache and an empty ovss cache."""
    import huggingface_hub.constants as C
    hf = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(hf))
    monkeypatch.setenv("HF_HUB_CACHE", str(hf / "hub"))
    monkeypatch.setenv("OVSS_CACHE", str(tmp_path / "ovss"))
    # huggingface_hub reads these at import time
    monkeypatch.setattr(C, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(C, "HF_HOME", str(hf))
    monkeypatch.setattr(C, "HF_HUB_CACHE", str(hf / "hub"))
    return tmp_path


def test_offline_download_error_names_file_and_command(offline):
    assert W.local_path("clip:ViT-B/16") is None
    with pytest.raises(W.MissingWeightsError) as e:
        W.resolve("clip:ViT-B/16", None)
    msg = str(e.value)
    assert "ViT-B-16.pt" in msg and "`ovss weights download clip:ViT-B/16`" in msg
    assert "clip_weights=" in msg


def test_offline_segmenter_raises_missing_weights(offline):
    with pytest.raises(W.MissingWeightsError) as e:
        ovss.Segmenter(method="sclip", classes=["cat", "dog"], clip="ViT-B/16", clip_weights=None, device="cpu")
    assert "ovss weights download clip:ViT-B/16" in str(e.value)
    assert isinstance(e.value, WeightsError)


def test_offline_url_weights_error(offline):
    with pytest.raises(W.MissingWeightsError) as e:
        W.resolve("dino_vitb8", None)
    assert "dino_vitbase8_pretrain.pth" in str(e.value) and "ovss weights download dino_vitb8" in str(e.value)
    # a file placed in the ovss cache by hand is found without the network
    target = os.path.join(W.cache_dir(), "weights", "dino_vitbase8_pretrain.pth")
    os.makedirs(os.path.dirname(target))
    open(target, "wb").close()
    assert W.resolve("dino_vitb8", None) == target


@pytest.fixture
def tiny_arch(monkeypatch):
    """Let load_clip('ViT-B/16', path) build the tiny architecture (fast) so file handling is what is tested."""
    import open_clip

    from ovss.backbones import clip as C
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: C._tiny_clip())
    return C


@pytest.mark.parametrize("content", [b"hello, not a checkpoint", bytes(range(256)) * 4])
@pytest.mark.parametrize("suffix", [".pt", ".safetensors", ".bin"])
def test_corrupt_weight_file_is_a_weights_error(tmp_path, tiny_arch, content, suffix):
    f = tmp_path / f"ViT-B-16{suffix}"
    f.write_bytes(content)
    with pytest.raises(WeightsError, match="cannot read it as ViT-B/16 CLIP weights") as e:
        tiny_arch.load_clip("ViT-B/16", str(f))
    assert str(f) in str(e.value)


def test_wrong_checkpoint_is_a_weights_error(tmp_path, tiny_arch):
    f = tmp_path / "other.pt"
    torch.save({"some.weight": torch.zeros(3)}, f)
    with pytest.raises(WeightsError, match="not a ViT-B/16 CLIP checkpoint"):
        tiny_arch.load_clip("ViT-B/16", str(f))
    torch.save([1, 2, 3], f)
    with pytest.raises(WeightsError, match="not a CLIP state_dict"):
        tiny_arch.load_clip("ViT-B/16", str(f))


def test_state_dict_round_trip_with_prefix_and_fp16(tmp_path, tiny_arch, tiny_clip):
    """A state_dict in the OpenAI key layout (here with a DDP 'module.' prefix, stored fp16) loads exactly."""
    sd = {f"module.{k}": v.half() for k, v in tiny_clip.model.state_dict().items()}
    f = tmp_path / "w.pt"
    torch.save({"state_dict": sd}, f)
    m = tiny_arch.load_clip("ViT-B/16", str(f))
    for k, v in m.model.state_dict().items():
        assert torch.equal(v, tiny_clip.model.state_dict()[k].half().float()), k
    assert m.weights_id.startswith(os.path.abspath(str(f)))
