"""Attention variants (spec §1.4), NACLIP's Ω (§2.5), the last block of every CLIP-only method and MaskCLIP's value
path, each compared with explicit formulas written out here from the block weights."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import ovss
from ovss.backbones import attention as A
from ovss.methods.naclip import neighbourhood_bias


def _softmax(z: torch.Tensor) -> torch.Tensor:
    e = torch.exp(z - z.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def _qkv(seed=0, B=2, H=3, T=5, d=4):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, H, T, d, generator=g, dtype=torch.float64) for _ in range(3))


# ---------------------------------------------------------------------------------------------- pure variants
@pytest.mark.parametrize("name", ["vanilla", "qq", "kk", "vv", "csa", "qkv_sum", "identity"])
def test_variant_matches_explicit_softmax_formula(name):
    q, k, v = _qkv()
    s = q.shape[-1] ** -0.5
    sm = lambda x, y: _softmax(s * x @ y.transpose(-1, -2))  # noqa: E731
    expect = {
        "vanilla": sm(q, k) @ v,
        "qq": sm(q, q) @ v,
        "kk": sm(k, k) @ v,
        "vv": sm(v, v) @ v,
        "csa": (sm(q, q) + sm(k, k)) @ v,
        "qkv_sum": (sm(q, q) + sm(k, k) + sm(v, v)) @ v,
        "identity": v,
    }[name]
    out = A.VARIANTS[name](q, k, v)
    torch.testing.assert_close(out, expect, rtol=1e-10, atol=1e-10)


def test_hand_computed_vanilla_two_tokens():
    # d = 1 (s = 1): q = [1, 0], k = [2, -1], v = [10, 20]
    q = torch.tensor([1.0, 0.0], dtype=torch.float64).view(1, 1, 2, 1)
    k = torch.tensor([2.0, -1.0], dtype=torch.float64).view(1, 1, 2, 1)
    v = torch.tensor([10.0, 20.0], dtype=torch.float64).view(1, 1, 2, 1)
    out = A.vanilla(q, k, v).flatten()
    w0 = math.exp(2) / (math.exp(2) + math.exp(-1))        # row 0: logits [2, -1]
    assert out[0].item() == pytest.approx(10 * w0 + 20 * (1 - w0), rel=1e-12)
    assert out[1].item() == pytest.approx(15.0, rel=1e-12)  # row 1: logits [0, 0]


@pytest.mark.parametrize("name,total", [("vanilla", 1), ("qq", 1), ("kk", 1), ("vv", 1), ("csa", 2), ("qkv_sum", 3),
                                        ("identity", 1)])
def test_rows_sum_to(name, total):
    q, k, _ = _qkv(1)
    ones = torch.ones_like(q)
    out = A.VARIANTS[name](q, k, ones) if name != "vv" else A.vv(q, k, ones)
    torch.testing.assert_close(out, torch.full_like(out, float(total)), rtol=0, atol=1e-12)
    # csa / qkv_sum are sums of row-stochastic maps, not averages: also with a non-constant v
    if name == "csa":
        v = _qkv(2)[2]
        s = q.shape[-1] ** -0.5
        maps = _softmax(s * q @ q.transpose(-1, -2)) + _softmax(s * k @ k.transpose(-1, -2))
        torch.testing.assert_close(maps.sum(-1), torch.full(maps.shape[:-1], 2.0, dtype=torch.float64))
        torch.testing.assert_close(A.csa(q, k, v), maps @ v)


def test_bias_is_added_after_scaling():
    q, k, v = _qkv(3, T=4)
    bias = torch.randn(4, 4, dtype=torch.float64)
    s = q.shape[-1] ** -0.5
    expect = _softmax(s * k @ k.transpose(-1, -2) + bias) @ v
    torch.testing.assert_close(A.kk(q, k, v, bias), expect)
    torch.testing.assert_close(A.attention_probs(k, k, bias), _softmax(s * k @ k.transpose(-1, -2) + bias))


# ---------------------------------------------------------------------------------------------- NACLIP Ω
def test_naclip_gaussian_bias_on_2x3_grid():
    # patches row-major: p0=(0,0) p1=(0,1) p2=(0,2) p3=(1,0) p4=(1,1) p5=(1,2); squared distances by hand
    d2 = [[0, 1, 4, 1, 2, 5],
          [1, 0, 1, 2, 1, 2],
          [4, 1, 0, 5, 2, 1],
          [1, 2, 5, 0, 1, 4],
          [2, 1, 2, 1, 0, 1],
          [5, 2, 1, 4, 1, 0]]
    sigma = 5.0
    om = neighbourhood_bias(2, 3, sigma)
    assert om.shape == (7, 7)
    assert torch.all(om[0] == 0) and torch.all(om[:, 0] == 0)     # CLS row and column: no bonus
    for u in range(6):
        for v in range(6):
            assert om[1 + u, 1 + v].item() == pytest.approx(math.exp(-d2[u][v] / (2 * sigma * sigma)), rel=1e-6)
    assert om[1, 1].item() == 1.0                                    # unnormalised: peak 1
    om2 = neighbourhood_bias(2, 3, 1.0)
    assert om2[1, 6].item() == pytest.approx(math.exp(-5 / 2), rel=1e-6)


# ---------------------------------------------------------------------------------------------- blocks
def _ln(x, mod):
    mu = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    return (x - mu) / torch.sqrt(var + mod.eps) * mod.weight + mod.bias


def _split(t, nh):
    B, T, D = t.shape
    return t.view(B, T, nh, D // nh).transpose(1, 2)


def _merge(t):
    B, nh, T, d = t.shape
    return t.transpose(1, 2).reshape(B, T, nh * d)


def _explicit_last_block(clip, x, kind, residual, mlp, bias=None):
    """The last block written out from its weights (spec §1.2, §1.4)."""
    blk = clip.blocks[-1]
    D = x.shape[-1]
    nh = clip.info.heads
    W, b = blk.attn.in_proj_weight, blk.attn.in_proj_bias
    U = _ln(x, blk.ln_1)
    Q, K, V = (_split(U @ W[i * D:(i + 1) * D].T + b[i * D:(i + 1) * D], nh) for i in range(3))
    s = (D // nh) ** -0.5
    bias = 0 if bias is None else bias
    if kind == "identity":
        O = V
    elif kind == "csa":
        O = (_softmax(s * Q @ Q.transpose(-1, -2)) + _softmax(s * K @ K.transpose(-1, -2))) @ V
    else:
        X, Y = {"vanilla": (Q, K), "qq": (Q, Q), "kk": (K, K)}[kind]
        O = _softmax(s * X @ Y.transpose(-1, -2) + bias) @ V
    a = _merge(O) @ blk.attn.out_proj.weight.T + blk.attn.out_proj.bias
    if not residual:
        return a
    y = x + a
    if not mlp:
        return y
    u = _ln(y, blk.ln_2)
    h = u @ blk.mlp.c_fc.weight.T + blk.mlp.c_fc.bias
    h = h * torch.sigmoid(1.702 * h)          # QuickGELU (OpenAI CLIP)
    return y + h @ blk.mlp.c_proj.weight.T + blk.mlp.c_proj.bias


def _tokens(clip, seed=0, T=11):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, T, clip.info.width, generator=g)


@pytest.mark.parametrize("kind,residual,mlp", [("vanilla", True, True), ("vanilla", False, False), ("qq", False, False),
                                               ("kk", False, False), ("identity", True, True),
                                               ("identity", False, False), ("qq", True, False),
                                               ("csa", True, True)])
def test_last_block_matches_explicit_block(tiny_clip, kind, residual, mlp):
    x = _tokens(tiny_clip)
    out = A.last_block(tiny_clip, x, kind, residual=residual, mlp=mlp)
    ref = _explicit_last_block(tiny_clip, x, kind, residual, mlp)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_full_vanilla_last_block_equals_open_clip_block(tiny_clip):
    x = _tokens(tiny_clip, 1)
    with torch.no_grad():
        ref = tiny_clip.blocks[-1](x)
    torch.testing.assert_close(A.last_block(tiny_clip, x, "vanilla", residual=True, mlp=True), ref,
                               rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- methods
def _reference_features(clip, x, kind, residual, mlp, bias_fn=None):
    """Patch features of a method: open_clip's own modules for blocks 0..L-2, the explicit last block, ln_post·proj."""
    v = clip.model.visual
    G = clip.info.grid
    with torch.no_grad():
        t = v.conv1(x)
        B, D, h, w = t.shape
        t = t.reshape(B, D, h * w).transpose(1, 2)
        pe = v.positional_embedding
        if h * w != G * G:   # PE-A
            grid = pe[1:].reshape(1, G, G, D).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, scale_factor=((h + 0.1) / G, (w + 0.1) / G), mode="bicubic",
                                 align_corners=False)
            pe = torch.cat([pe[:1], grid.permute(0, 2, 3, 1).reshape(h * w, D)])
        t = torch.cat([v.class_embedding.expand(B, 1, D), t], 1) + pe
        t = v.ln_pre(t)
        for blk in clip.blocks[:-1]:
            t = blk(t)
        bias = bias_fn(h, w) if bias_fn else None
        t = _explicit_last_block(clip, t, kind, residual, mlp, bias)
        return _ln(t, v.ln_post)[:, 1:] @ v.proj, h, w


METHOD_ATTN = {
    "clip": ("vanilla", True, True),
    "maskclip": ("identity", True, True),
    "sclip": ("csa", True, True),
    "clearclip": ("qq", False, False),
    "naclip": ("kk", False, False),
}


def _segmenter(method, **kw):
    return ovss.Segmenter(method=method, classes=["cat", "dog"], clip="tiny-test", clip_weights="random",
                          device="cpu", templates="none", **kw)


@pytest.mark.parametrize("size", [(224, 224), (160, 208)])
@pytest.mark.parametrize("method", list(METHOD_ATTN))
def test_method_patch_features_follow_the_spec(tiny_clip, method, size):
    seg = _segmenter(method)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 3, *size, generator=g)
    with torch.no_grad():
        f, h, w = seg.method.patch_features(x)
    assert (h, w) == (size[0] // 16, size[1] // 16)
    kind, residual, mlp = METHOD_ATTN[method]
    bias_fn = (lambda hh, ww: neighbourhood_bias(hh, ww, 5.0)) if method == "naclip" else None
    ref, *_ = _reference_features(tiny_clip, x, kind, residual, mlp, bias_fn)
    assert f.shape == ref.shape == (1, h * w, tiny_clip.info.embed_dim)
    torch.testing.assert_close(f, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_maskclip_is_identity_attention_and_reduced_value_path(tiny_clip):
    x = torch.randn(1, 3, 160, 192, generator=torch.Generator().manual_seed(7))
    seg = _segmenter("maskclip")
    seg_r = _segmenter("maskclip", residual=False)
    clip = tiny_clip
    with torch.no_grad():
        t, h, w = clip.embed(x)
        t = clip.run_blocks(t, 0, len(clip.blocks) - 1)
        full = clip.head(A.last_block(clip, t, "identity", residual=True, mlp=True)[:, 1:])
        f, *_ = seg.method.patch_features(x)
        torch.testing.assert_close(f, full, rtol=0, atol=0)
        # reduced: (U·W_vᵀ + b_v)·W_outᵀ + b_out, by hand from the block weights, then ln_post and proj
        blk = clip.blocks[-1]
        D = t.shape[-1]
        U = _ln(t, blk.ln_1)
        val = U @ blk.attn.in_proj_weight[2 * D:].T + blk.attn.in_proj_bias[2 * D:]
        out = val @ blk.attn.out_proj.weight.T + blk.attn.out_proj.bias
        ref = _ln(out, clip.visual.ln_post)[:, 1:] @ clip.visual.proj
        fr, *_ = seg_r.method.patch_features(x)
    torch.testing.assert_close(fr, ref, rtol=1e-4, atol=1e-5)
    # no token mixing: changing one token leaves every other token's output unchanged (bit for bit)
    t2 = t.clone()
    t2[:, 5] += 1.0
    with torch.no_grad():
        a1 = A.last_block(clip, t, "identity")
        a2 = A.last_block(clip, t2, "identity")
    changed = (a1 != a2).any(-1)[0]
    assert changed.nonzero().flatten().tolist() == [5]


def test_explicit_attention_hand_computed_and_row_chunks_change_no_bit():
    # one head, 2 tokens, d = 4 (s = 1/2): q0·k = (2, 0) -> scores (1, 0); q1·k = (0, 0) -> uniform
    q = torch.tensor([[[[2., 0, 0, 0], [0, 0, 0, 0]]]])
    k = torch.tensor([[[[1., 0, 0, 0], [0, 1, 0, 0]]]])
    v = torch.tensor([[[[1., 0], [0, 1]]]])
    e = math.e
    want = torch.tensor([[[[e / (e + 1), 1 / (e + 1)], [0.5, 0.5]]]])
    torch.testing.assert_close(A.explicit_attention(q, k, v), want)
    # the official three steps on a DINO-sized sequence: identical bits with chunks of 128 / 64 rows
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 4, 785, 16) for _ in range(3))
    plain = ((q * 0.25) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
    for rows in (64, 128, 785):
        assert torch.equal(A.explicit_attention(q, k, v, 0.25, rows=rows), plain)


def test_explicit_vit_attention_is_timms_non_fused_path_bit_for_bit():
    from ovss.backbones.vfm import explicit_vit_attention, load_vfm
    vfm = load_vfm("tiny_vit8", "random")
    x = torch.randn(2, 300, vfm.embed_dim)
    attn = vfm.vit.blocks[0].attn
    with torch.inference_mode():
        attn.fused_attn = False
        timm_plain = attn(x)
        attn.fused_attn = True
        with explicit_vit_attention(vfm.vit):
            ours = attn(x)
        assert "forward" not in attn.__dict__            # restored
        assert torch.equal(ours, timm_plain)
