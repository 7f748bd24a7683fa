"""MetaCLIP ViT-B/16 in the weights registry, and the per-method default CLIP (Segmenter(clip=None), the CLI's
--clip, `ovss weights download --method`)."""
from __future__ import annotations

import pytest
import torch

import ovss
from ovss import weights as W
from ovss.backbones import clip as C
from ovss.cli import build_parser
from ovss.errors import InputError
from ovss.methods import get_method

SCLIP = get_method("sclip")


def test_metaclip_names_and_registry_entry_follow_open_clip():
    import open_clip
    for name in ("MetaCLIP-B/16", "MetaCLIP-B-16", "metaclip_fullcc", "ViT-B-16-quickgelu:metaclip_fullcc"):
        assert C.canonical_name(name) == "MetaCLIP-B/16"
    arch, key = C.ARCHS["MetaCLIP-B/16"]
    assert arch == C.ARCHS["ViT-B/16"][0] == "ViT-B-16-quickgelu"      # the OpenAI B/16 architecture
    s = W.spec(key)
    assert W.spec("metaclip_fullcc") is s and s.arg == "clip_weights" and s.filename == "b16_fullcc2.5b.pt"
    cfg = open_clip.get_pretrained_cfg("ViT-B-16-quickgelu", "metaclip_fullcc")
    assert cfg["hf_hub"].rstrip("/") == s.hf_repo and cfg["url"].endswith("/" + s.filename) and cfg["quick_gelu"]
    assert s.hf_files[0] == "open_clip_model.safetensors"


def test_metaclip_offline_message(tmp_path, monkeypatch):
    import huggingface_hub.constants as HC
    monkeypatch.setenv("OVSS_OFFLINE", "1")
    monkeypatch.setattr(HC, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(W.MissingWeightsError) as e:
        C.load_clip("MetaCLIP-B/16", None)
    msg = str(e.value)
    assert "`ovss weights download clip:MetaCLIP-B/16`" in msg and "b16_fullcc2.5b.pt" in msg
    assert "timm/vit_base_patch16_clip_224.metaclip_2pt5b" in msg


def test_clip_for_prefers_the_user_then_the_method_then_vit_b16(monkeypatch):
    assert C.clip_for(SCLIP) == "ViT-B/16" == C.DEFAULT_CLIP
    assert C.clip_for(SCLIP, "ViT-L-14") == "ViT-L/14"
    monkeypatch.setattr(SCLIP, "default_clip", "metaclip_fullcc", raising=False)
    assert C.clip_for(SCLIP) == "MetaCLIP-B/16" and C.clip_for(SCLIP, "ViT-B/16") == "ViT-B/16"
    with pytest.raises(InputError, match="unknown CLIP model 'ViT-X'"):
        C.clip_for(SCLIP, "ViT-X")


def test_segmenter_uses_the_methods_default_clip(monkeypatch, tiny_clip):
    monkeypatch.setattr(SCLIP, "default_clip", "tiny-test", raising=False)
    seg = ovss.Segmenter(method="sclip", classes=["cat", "dog"], clip_weights="random", device="cpu")
    assert seg.clip_name == "tiny-test" and seg.method.clip is tiny_clip and seg.config()["clip"] == "tiny-test"
    monkeypatch.setattr(SCLIP, "default_clip", "MetaCLIP-B/16", raising=False)
    seg = ovss.Segmenter(method="sclip", classes=["cat", "dog"], clip="tiny-test", clip_weights="random", device="cpu")
    assert seg.clip_name == "tiny-test"           # an explicit clip= wins


def test_keys_for_method_follow_the_default_clip(monkeypatch):
    assert W.keys_for_method("sclip") == ["clip:ViT-B/16"]
    monkeypatch.setattr(SCLIP, "default_clip", "MetaCLIP-B/16", raising=False)
    assert W.keys_for_method("sclip") == ["clip:MetaCLIP-B/16"]
    assert W.keys_for_method("sclip", clip="ViT-L/14") == ["clip:ViT-L/14"]


def test_keys_for_a_method_with_a_mask_generator(monkeypatch):
    from dataclasses import make_dataclass

    from ovss.backbones import mask_generator as MG
    from ovss.methods.base import Params
    P = make_dataclass("P", [("mask_generator", str, "auto")], bases=(Params,))
    monkeypatch.setattr(SCLIP, "Params", P)
    monkeypatch.setattr(SCLIP, "PRESETS", {})
    monkeypatch.setattr(SCLIP, "DEFAULT_PRESET", {})
    monkeypatch.setattr(MG, "sam2_available", lambda: True)
    assert W.keys_for_method("sclip") == ["clip:ViT-B/16", "sam2:hiera_l"]
    monkeypatch.setattr(MG, "sam2_available", lambda: False)
    assert W.keys_for_method("sclip") == ["clip:ViT-B/16", "sam:vit_h"]


def test_corrclip_defaults_when_the_method_declares_them():
    try:
        cls = get_method("corrclip")
    except InputError:
        pytest.skip("corrclip is not in this build")
    if getattr(cls, "default_clip", None) is None:
        pytest.skip("corrclip does not declare default_clip yet")
    assert C.clip_for(cls) == "MetaCLIP-B/16"
    keys = W.keys_for_method("corrclip")
    assert keys[0] == "clip:MetaCLIP-B/16" and "dino_vitb8" in keys
    assert keys[-1] in ("sam2:hiera_l", "sam:vit_h")


@pytest.mark.parametrize("argv", [["segment", "x.jpg"], ["bench"], ["weights", "download", "-m", "sclip"],
                                  ["eval", "--method", "sclip", "--dataset", "voc21", "--data-root", "d"]])
def test_cli_clip_defaults_to_the_methods_own(argv):
    assert build_parser().parse_args(argv).clip is None


@pytest.mark.slow
def test_metaclip_random_is_the_b16_architecture(vitb16):
    m = C.load_clip("MetaCLIP-B/16", "random", torch.device("cpu"), torch.float32)
    assert m.name == "MetaCLIP-B/16" and m.info == C.ClipInfo(**{**vitb16.info.__dict__, "name": "MetaCLIP-B/16"})
    a, b = m.model.state_dict(), vitb16.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert m.weights_id == vitb16.weights_id    # same random init; the text cache still keys on the name


def test_app_offers_the_method_default_and_metaclip(monkeypatch, tiny_clip, tmp_path):
    from ovss import app as A
    cfg = A.AppConfig(clip_weights="random", device="cpu")
    assert cfg.clip == A.METHOD_CLIP == cfg.clip_choices()[0] and "MetaCLIP-B/16" in cfg.clip_choices()
    monkeypatch.setattr(SCLIP, "default_clip", "tiny-test", raising=False)
    b = A.Backend(cfg, workdir=str(tmp_path))
    seg, _ = b.segmenter("sclip", A.METHOD_CLIP, None, {}, b.parse_classes("cat, dog"))
    assert seg.clip_name == "tiny-test" and seg.method.clip is tiny_clip
    assert build_parser().parse_args(["app"]).clip is None
