"""Vision foundation models (VFMs) used as proxies by ProxyCLIP and Trident: DINO, DINOv2, MAE (and SAM).

The ViTs are timm ``VisionTransformer`` modules (patch embedding, blocks, final norm) driven by our own
forward, because the official hub models differ from timm's forward in how the positional embedding is
resampled (``spec/methods.md`` §1.3):

* DINO (facebookresearch/dino hub): PE-A — bicubic with ``scale_factor=((h+0.1)/G, (w+0.1)/G)`` passed
  through to the kernel; skipped only when the token count matches *and* the input is square;
* DINOv2 with registers (hub ``dinov2_vitb14_reg``: ``interpolate_offset=0.0, interpolate_antialias=True``):
  bicubic *to size* with antialiasing, computed in fp32; the 4 register tokens follow the class token and
  get no positional embedding;
* MAE (ProxyCLIP's ``models_vit``): PE-C — resized once to the input grid, bicubic to size, no antialias;
  the input is bilinearly resized to a fixed square size first.

``VFM.features(x)`` takes ImageNet-normalised images ``(B, 3, H, W)`` and returns the last block's output
after the final norm, patch tokens only (class / register tokens dropped), as ``(B, C, h, w)``.
"""
from __future__ import annotations

import hashlib
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class VitConfig:
    """Architecture of one ViT proxy."""
    patch: int
    dim: int
    depth: int
    heads: int
    grid: int                 # pretrain grid G of the positional embedding
    pe: str                   # "dino" (PE-A) | "dinov2" (bicubic to size, antialias) | "mae" (PE-C)
    reg_tokens: int = 0
    layer_scale: bool = False
    fixed_input: bool = False  # MAE: input resized to a fixed square size before the ViT


CONFIGS: dict[str, VitConfig] = {
    "dino_vits8": VitConfig(8, 384, 12, 6, 28, "dino"),
    "dino_vits16": VitConfig(16, 384, 12, 6, 14, "dino"),
    "dino_vitb8": VitConfig(8, 768, 12, 12, 28, "dino"),
    "dino_vitb16": VitConfig(16, 768, 12, 12, 14, "dino"),
    "dinov2_vitb14": VitConfig(14, 768, 12, 12, 37, "dinov2", reg_tokens=4, layer_scale=True),
    "mae_vitb16": VitConfig(16, 768, 12, 12, 14, "mae", fixed_input=True),
    # small architecture for fast tests (random weights only)
    "tiny_vit8": VitConfig(8, 64, 2, 4, 4, "dino"),
}
ALIASES = {"dinov2_vitb14_reg": "dinov2_vitb14", "mae_vit_b16": "mae_vitb16", "sam_vit_b": "sam_vitb"}
VFM_NAMES = tuple(n for n in CONFIGS if not n.startswith("tiny")) + ("sam_vitb",)


# --------------------------------------------------------------------------------------------------
# positional embeddings


def resample_pe_a(patch_pe: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """PE-A: (1, G*G, D) -> (1, h*w, D), bicubic with scale factors ((h+0.1)/G, (w+0.1)/G) kept as given."""
    g = int(round(math.sqrt(patch_pe.shape[1])))
    d = patch_pe.shape[-1]
    grid = patch_pe.reshape(1, g, g, d).permute(0, 3, 1, 2)
    out = F.interpolate(grid, scale_factor=((h + 0.1) / g, (w + 0.1) / g), mode="bicubic",
                        align_corners=False, recompute_scale_factor=False)
    assert out.shape[-2:] == (h, w), (out.shape, h, w)
    return out.permute(0, 2, 3, 1).reshape(1, h * w, d)


def resample_to_size(patch_pe: torch.Tensor, h: int, w: int, antialias: bool) -> torch.Tensor:
    """Bicubic resampling *to size* (DINOv2-reg hub: antialias=True; MAE's load-time resize: False)."""
    g = int(round(math.sqrt(patch_pe.shape[1])))
    d = patch_pe.shape[-1]
    grid = patch_pe.reshape(1, g, g, d).permute(0, 3, 1, 2)
    out = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False, antialias=antialias)
    return out.permute(0, 2, 3, 1).reshape(1, h * w, d)


# --------------------------------------------------------------------------------------------------
# the model


class VFM(nn.Module):
    """A ViT proxy. ``features(x)`` -> (B, C, h, w) patch tokens after the final norm."""

    def __init__(self, name: str, cfg: VitConfig, input_size: int = 336):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        self.name, self.cfg = name, cfg
        self.patch_size, self.embed_dim = cfg.patch, cfg.dim
        self.input_size = input_size          # MAE only: the fixed square input (ProxyCLIP: slide_crop)
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.vit = VisionTransformer(img_size=cfg.grid * cfg.patch, patch_size=cfg.patch, embed_dim=cfg.dim,
                                     depth=cfg.depth, num_heads=cfg.heads, mlp_ratio=4.0, qkv_bias=True,
                                     num_classes=0, init_values=1.0 if cfg.layer_scale else None,
                                     class_token=True, reg_tokens=0, no_embed_class=False)
        # the official layout: pos_embed covers the class token + G*G patches; registers separate
        self.register_tokens = nn.Parameter(torch.zeros(1, cfg.reg_tokens, cfg.dim)) if cfg.reg_tokens else None
        self._pe_cache: dict = {}

    # -- positional embedding ------------------------------------------------------------------
    def pos_embed(self, h: int, w: int, square: bool) -> torch.Tensor:
        """(1, 1 + h*w, D) positional embedding for an h x w patch grid (class row first)."""
        pe = self.vit.pos_embed
        g = self.cfg.grid
        if h * w == g * g and (square or self.cfg.pe == "mae"):
            return pe
        key = (h, w, pe.dtype, pe.device)
        if key not in self._pe_cache:
            cls_pe, patch_pe = pe[:, :1], pe[:, 1:].float()      # resampled in fp32, then cast back
            if self.cfg.pe == "dino":
                new = resample_pe_a(patch_pe, h, w)
            elif self.cfg.pe == "dinov2":
                new = resample_to_size(patch_pe, h, w, antialias=True)
            else:
                new = resample_to_size(patch_pe, h, w, antialias=False)
            new = new.to(pe.dtype)
            self._pe_cache[key] = torch.cat([cls_pe, new], dim=1)
        return self._pe_cache[key]

    def _apply(self, fn, *args, **kwargs):  # a dtype/device move invalidates the cached embeddings
        self._pe_cache = {}
        return super()._apply(fn, *args, **kwargs)

    # -- forward ---------------------------------------------------------------------------------
    def tokens(self, x: torch.Tensor, size: Optional[int] = None, stop: Optional[int] = None) -> torch.Tensor:
        """All tokens (class, registers, patches) after the final norm: (B, 1 + R + h*w, D).
        `size`: MAE's fixed square input (default: ``input_size``); ignored by the others.
        `stop`: run blocks 0..stop-1 only and return their output without the final norm (CorrCLIP reads the
        last block's qkv)."""
        v = self.vit
        x = x.to(v.pos_embed.dtype)
        if self.cfg.fixed_input:
            s = size or self.input_size
            if x.shape[-2:] != (s, s):
                x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
        B, _, H, W = x.shape
        t = v.patch_embed.proj(x)                      # conv, stride = patch: pixels past the last patch dropped
        h, w = t.shape[-2:]
        t = t.flatten(2).transpose(1, 2)
        t = torch.cat([v.cls_token.expand(B, -1, -1), t], dim=1)
        t = t + self.pos_embed(h, w, square=(H == W))
        if self.register_tokens is not None:
            t = torch.cat([t[:, :1], self.register_tokens.expand(B, -1, -1), t[:, 1:]], dim=1)
        for blk in v.blocks[:stop]:
            t = blk(t)
        return v.norm(t) if stop is None else t

    def grid(self, H: int, W: int, size: Optional[int] = None) -> tuple[int, int]:
        """Patch grid of the features for an H x W input."""
        if self.cfg.fixed_input:
            H = W = size or self.input_size
        return H // self.patch_size, W // self.patch_size

    @torch.no_grad()
    def features(self, x: torch.Tensor, size: Optional[int] = None) -> torch.Tensor:
        """(B, 3, H, W) ImageNet-normalised -> (B, D, h, w): last block, final norm, patch tokens only."""
        h, w = self.grid(*x.shape[-2:], size=size)
        t = self.tokens(x, size)[:, 1 + self.cfg.reg_tokens:]
        return t.transpose(1, 2).reshape(t.shape[0], -1, h, w)

    forward = features


def _explicit_forward(attn: nn.Module, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
    """timm ``Attention.forward`` with its non-fused arithmetic, row-chunked (`attention.explicit_attention`)."""
    from .attention import explicit_attention
    if attn_mask is not None or is_causal or getattr(attn, "gate", None) is not None:
        raise NotImplementedError("explicit ViT attention: masks and gates are not used by the proxies")
    B, N, _ = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    o = explicit_attention(q, k, v, attn.scale)
    o = attn.norm(o.transpose(1, 2).reshape(B, N, -1))
    return attn.proj_drop(attn.proj(o))


@contextmanager
def explicit_vit_attention(vit: nn.Module):
    """Run a timm ViT's attention as the explicit softmax((q·s)·kᵀ)·v (the official DINO / timm non-fused
    arithmetic, bit for bit) instead of SDPA, restored afterwards."""
    mods = [b.attn for b in vit.blocks]
    for a in mods:
        a.forward = partial(_explicit_forward, a)
    try:
        yield
    finally:
        for a in mods:
            del a.forward


# --------------------------------------------------------------------------------------------------
# weights


def _stable_randn(seed: int, key: str, shape) -> torch.Tensor:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return torch.randn(tuple(shape), generator=g)


def random_state_dict(model: nn.Module, seed: int = 0, depth: int = 12) -> dict:
    """Deterministic random weights (independent of construction order and global RNG): matrices
    N(0,1)/sqrt(fan_in) (residual-branch outputs further /sqrt(2*depth)), norm weights 1+0.05N, biases
    0.02N, embeddings/tokens 0.3N, layer-scale 1. Keeps activations O(1) and attention non-degenerate."""
    out = {}
    for k, p in model.state_dict().items():
        last = k.split(".")[-1]
        n = _stable_randn(seed, k, p.shape)
        if last in ("cls_token", "pos_embed", "register_tokens", "reg_token", "rel_pos_h", "rel_pos_w"):
            v = 0.3 * n
        elif last == "gamma" and ".ls" in k:
            v = torch.ones(p.shape)
        elif p.ndim <= 1:
            v = (1.0 + 0.05 * n) if ("norm" in k and last == "weight") else 0.02 * n
        else:
            v = n / math.sqrt(max(1, p[0].numel()))
            if k.endswith(("attn.proj.weight", "mlp.fc2.weight", "mlp.lin2.weight")):
                v = v / math.sqrt(2 * depth)
        out[k] = v.to(p.dtype)
    return out


def _read_checkpoint(path: str) -> dict:
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            sd = load_file(path)
        else:
            sd = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - surfaced to the user with the file name
        raise WeightsError(f"cannot read VFM weights {path!r}: {type(e).__name__}: {e}") from None
    for key in ("model", "state_dict", "teacher"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    return {k.removeprefix("module.").removeprefix("backbone."): v for k, v in sd.items()}


def convert_state_dict(sd: dict, cfg: VitConfig) -> dict:
    """Official (DINO / DINOv2 / MAE) or timm layout -> this module's layout (``vit.*`` + registers)."""
    out = {}
    for k, v in sd.items():
        if k.startswith(("head", "fc_norm", "mask_token", "decoder", "dist_token")) or k == "norm_pre":
            continue
        if k in ("register_tokens", "reg_token"):
            out["register_tokens"] = v
            continue
        out["vit." + k] = v
    pe = out.get("vit.pos_embed")
    n_patch = cfg.grid * cfg.grid
    if pe is not None and pe.shape[1] == n_patch:        # timm no_embed_class layout (DINOv2 via timm)
        out["vit.pos_embed"] = torch.cat([torch.zeros_like(pe[:, :1]), pe], dim=1)
    return out


def load_vfm(name: str, weights: Optional[str] = None, device="cpu", dtype: torch.dtype = torch.float32,
             seed: int = 0, input_size: int = 336):
    """Build VFM `name` with `weights` ("random", a path in the official or timm layout, or None =
    download/cache via ``ovss.weights``). ``sam_vitb`` returns a :class:`ovss.backbones.sam.SamProxy`.
    `input_size`: MAE's fixed square input (ProxyCLIP: its slide_crop)."""
    name = ALIASES.get(name, name)
    if name == "sam_vitb":
        from .sam import SamProxy, load_sam
        return SamProxy(load_sam("vit_b", weights, device=device, dtype=dtype, seed=seed))
    if name not in CONFIGS:
        raise WeightsError(f"unknown VFM {name!r}; known: {', '.join(VFM_NAMES)}")
    cfg = CONFIGS[name]
    if not name.startswith("tiny"):
        from .. import weights as W
        weights = W.resolve(name, weights)
    elif weights not in (None, "random"):
        weights = os.fspath(weights)
    with torch.random.fork_rng():       # timm's init draws from the global RNG; keep the user's intact
        model = VFM(name, cfg, input_size=input_size)
    if weights in (None, "random"):
        sd = random_state_dict(model, seed=seed, depth=cfg.depth)
    else:
        sd = convert_state_dict(_read_checkpoint(weights), cfg)
    if cfg.pe == "mae" and "vit.norm.weight" not in sd:   # ProxyCLIP loads MAE non-strictly: a checkpoint
        sd["vit.norm.weight"] = torch.ones(cfg.dim)       # without the encoder norm keeps the identity init
        sd["vit.norm.bias"] = torch.zeros(cfg.dim)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise WeightsError(f"{name}: weights {weights!r} do not match the architecture "
                           f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
