"""DINO / DINOv2 / MAE proxies: PE-A numerics, a manual re-derivation of the forward, weight layouts."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovss.backbones import vfm as V
from ovss.errors import WeightsError


def _cubic(x: float, a: float = -0.75) -> float:
    x = abs(x)
    if x <= 1:
        return (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1
    if x < 2:
        return a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a
    return 0.0


def _bicubic_1d_matrix(n_in: int, n_out: int, inv_scale: float) -> np.ndarray:
    """Row i: weights of source samples for output i read at (i+0.5)*inv_scale-0.5 (borders clamped)."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = (i + 0.5) * inv_scale - 0.5
        f = math.floor(src)
        t = src - f
        for o, wgt in zip(range(-1, 3), (_cubic(t + 1), _cubic(t), _cubic(1 - t), _cubic(2 - t))):
            m[i, min(max(f + o, 0), n_in - 1)] += wgt
    return m


def test_pe_a_matches_hand_bicubic_with_scale_factor_coordinates():
    G, h, w, D = 3, 5, 4, 2
    torch.manual_seed(0)
    pe = torch.randn(1, G * G, D, dtype=torch.float64)
    out = V.resample_pe_a(pe, h, w).reshape(h, w, D).numpy()
    grid = pe.reshape(G, G, D).numpy()
    Mh = _bicubic_1d_matrix(G, h, G / (h + 0.1))   # PE-A: source coordinate uses (h+0.1)/G
    Mw = _bicubic_1d_matrix(G, w, G / (w + 0.1))
    want = np.einsum("ia,jb,abd->ijd", Mh, Mw, grid)
    np.testing.assert_allclose(out, want, atol=1e-10)
    # resampling "to size" reads other coordinates and gives different numbers
    to_size = np.einsum("ia,jb,abd->ijd", _bicubic_1d_matrix(G, h, G / h), _bicubic_1d_matrix(G, w, G / w), grid)
    assert np.abs(to_size - want).max() > 1e-3


def _manual_forward(m: V.VFM, x: torch.Tensor) -> torch.Tensor:
    """The DINO forward written out from the spec, with the modules' raw weights."""
    v = m.vit
    p = m.patch_size
    t = F.conv2d(x, v.patch_embed.proj.weight, v.patch_embed.proj.bias, stride=p)
    B, D, h, w = t.shape
    t = torch.cat([v.cls_token.expand(B, -1, -1), t.flatten(2).transpose(1, 2)], 1)
    pe = v.pos_embed
    if not (h * w == pe.shape[1] - 1 and x.shape[-2] == x.shape[-1]):
        pe = torch.cat([pe[:, :1], V.resample_pe_a(pe[:, 1:], h, w)], 1)
    t = t + pe
    nh = m.cfg.heads
    for blk in v.blocks:
        u = F.layer_norm(t, (D,), blk.norm1.weight, blk.norm1.bias, 1e-6)
        q, k, vv = (u @ blk.attn.qkv.weight.T + blk.attn.qkv.bias).chunk(3, -1)
        sh = lambda z: z.reshape(B, -1, nh, D // nh).transpose(1, 2)  # noqa: E731
        a = torch.softmax(sh(q) @ sh(k).transpose(-1, -2) * (D // nh) ** -0.5, -1)
        o = (a @ sh(vv)).transpose(1, 2).reshape(B, -1, D)
        t = t + o @ blk.attn.proj.weight.T + blk.attn.proj.bias
        u = F.layer_norm(t, (D,), blk.norm2.weight, blk.norm2.bias, 1e-6)
        hdn = F.gelu(u @ blk.mlp.fc1.weight.T + blk.mlp.fc1.bias)
        t = t + hdn @ blk.mlp.fc2.weight.T + blk.mlp.fc2.bias
    t = F.layer_norm(t, (D,), v.norm.weight, v.norm.bias, 1e-6)
    return t[:, 1:].transpose(1, 2).reshape(B, D, h, w)


@pytest.mark.parametrize("hw", [(40, 24), (37, 29), (32, 32)])
def test_features_equal_manual_derivation(hw):
    m = V.load_vfm("tiny_vit8", "random", seed=3)
    x = torch.randn(2, 3, *hw)
    got = m.features(x)
    assert got.shape == (2, 64, hw[0] // 8, hw[1] // 8)
    torch.testing.assert_close(got, _manual_forward(m, x), atol=2e-5, rtol=1e-5)


def test_pe_skip_rule_is_dino_s():
    m = V.load_vfm("tiny_vit8", "random")           # G = 4 -> 16 patches
    pe = m.vit.pos_embed
    assert m.pos_embed(4, 4, square=True) is pe       # count matches and square: as is
    non_square = m.pos_embed(2, 8, square=False)      # same count, not square: resampled
    assert non_square.shape == pe.shape and not torch.allclose(non_square, pe)
    # a square input whose grid count matches but pixels are not an exact multiple still skips
    x = torch.randn(1, 3, 35, 35)
    assert m.features(x).shape[-2:] == (4, 4)


def test_official_layout_roundtrip_and_timm_dinov2_layout(tmp_path):
    m = V.load_vfm("tiny_vit8", "random", seed=1)
    sd = {k.removeprefix("vit."): v for k, v in m.state_dict().items()}
    path = tmp_path / "dino_tiny.pth"
    torch.save(sd, path)
    m2 = V.load_vfm("tiny_vit8", str(path))
    x = torch.randn(1, 3, 48, 32)
    torch.testing.assert_close(m.features(x), m2.features(x), atol=0, rtol=0)

    # DINOv2 in timm's layout: class-row positional embedding folded into cls_token, reg_token
    cfg = V.VitConfig(8, 64, 1, 4, 4, "dinov2", reg_tokens=2, layer_scale=True)
    a = V.VFM("t", cfg)
    a.load_state_dict(V.random_state_dict(a, seed=5, depth=1))
    official = {k.removeprefix("vit."): v for k, v in a.state_dict().items()}
    timm_sd = dict(official)
    timm_sd["cls_token"] = official["cls_token"] + official["pos_embed"][:, :1]
    timm_sd["pos_embed"] = official["pos_embed"][:, 1:]
    timm_sd["reg_token"] = timm_sd.pop("register_tokens")
    b = V.VFM("t", cfg)
    b.load_state_dict(V.convert_state_dict(timm_sd, cfg))
    x = torch.randn(1, 3, 40, 24)
    torch.testing.assert_close(a.features(x), b.features(x), atol=1e-5, rtol=1e-5)
    assert a.features(x).shape == (1, 64, 5, 3)        # registers dropped


def test_dinov2_pe_is_antialiased_bicubic_to_size():
    cfg = V.VitConfig(8, 16, 1, 2, 6, "dinov2", reg_tokens=1, layer_scale=True)
    m = V.VFM("t", cfg)
    m.load_state_dict(V.random_state_dict(m, seed=2, depth=1))
    pe = m.pos_embed(4, 3, square=False)[:, 1:].reshape(4, 3, 16)
    grid = m.vit.pos_embed[:, 1:].reshape(1, 6, 6, 16).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(4, 3), mode="bicubic", align_corners=False, antialias=True)
    torch.testing.assert_close(pe, want[0].permute(1, 2, 0))


def test_mae_resizes_input_and_uses_fixed_grid():
    m = V.load_vfm("mae_vitb16", "random", input_size=224)
    assert m.grid(300, 200) == (14, 14)
    assert m.pos_embed(14, 14, square=True) is m.vit.pos_embed   # PE-C at the pretrain grid: as is


def test_errors():
    with pytest.raises(WeightsError, match="unknown VFM"):
        V.load_vfm("dino_vitx99", "random")
    with pytest.raises(WeightsError, match="no such file"):
        V.load_vfm("dino_vitb16", "/nonexistent/dino.pth")


@pytest.mark.slow
@pytest.mark.parametrize("name,grid", [("dino_vits8", (42, 28)), ("dino_vitb16", (21, 14)),
                                       ("dinov2_vitb14", (24, 16)), ("mae_vitb16", (21, 21))])
def test_full_size_random(name, grid):
    m = V.load_vfm(name, "random")
    f = m.features(torch.randn(1, 3, 336, 224))
    assert f.shape[-2:] == grid and torch.isfinite(f).all()


def test_mae_checkpoint_layout(tmp_path):
    """MAE's released file: {'model': encoder keys (+ decoder keys in full checkpoints)}, loaded like ProxyCLIP."""
    m = V.load_vfm("mae_vitb16", "random", seed=4, input_size=224)
    sd = {k.removeprefix("vit."): v for k, v in m.state_dict().items()}
    sd["decoder_embed.weight"] = torch.zeros(2, 2)
    sd["mask_token"] = torch.zeros(1, 1, 768)
    torch.save({"model": sd}, tmp_path / "mae.pth")
    m2 = V.load_vfm("mae_vitb16", str(tmp_path / "mae.pth"), input_size=224)
    x = torch.randn(1, 3, 100, 150)
    torch.testing.assert_close(m2.features(x), m.features(x), atol=0, rtol=0)
    assert m.features(x).shape == (1, 768, 14, 14)
