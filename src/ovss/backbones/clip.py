"""A thin adapter over open_clip's CLIP so that methods can reach what they need of the image tower:
the tokens entering any block, per-block q/k/v and attention maps, the `ln_post` + `proj` head, and the
positional-embedding resampling variants of the official code (which differ from open_clip's own).

Nothing here decides which attention a method uses; see :mod:`ovss.backbones.attention`.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import weights as W
from ..errors import InputError, WeightsError

# names users know -> (open_clip architecture, weight registry key)
ARCHS = {
    "ViT-B/16": ("ViT-B-16-quickgelu", "clip:ViT-B/16"),
    "ViT-L/14": ("ViT-L-14-quickgelu", "clip:ViT-L/14"),
    "ViT-H/14": ("ViT-H-14", "clip:ViT-H/14"),
    "MetaCLIP-B/16": ("ViT-B-16-quickgelu", "clip:MetaCLIP-B/16"),   # OpenAI's B/16 architecture, MetaCLIP weights
    "tiny-test": (None, None),   # a small random CLIP (2 blocks) for fast tests
}
ALIASES = {"ViT-B-16": "ViT-B/16", "ViT-L-14": "ViT-L/14", "ViT-H-14": "ViT-H/14", "vit_b16": "ViT-B/16",
           "vit_l14": "ViT-L/14", "vit_h14": "ViT-H/14", "MetaCLIP-B-16": "MetaCLIP-B/16",
           "metaclip_b16": "MetaCLIP-B/16", "metaclip_fullcc": "MetaCLIP-B/16",
           "ViT-B-16-quickgelu:metaclip_fullcc": "MetaCLIP-B/16"}
DEFAULT_CLIP = "ViT-B/16"   # what a Segmenter loads when neither the user nor the method names a CLIP model

# OpenAI CLIP normalisation (the [0, 1] constants; mmseg uses the same x255)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def canonical_name(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in ARCHS:
        raise InputError(f"unknown CLIP model {name!r}; available: {', '.join(a for a in ARCHS if a != 'tiny-test')}")
    return name


def clip_for(method_cls, clip: Optional[str] = None) -> str:
    """The canonical CLIP name a Segmenter of `method_cls` loads: `clip` when given, else the method's
    ``default_clip`` class attribute (CorrCLIP: MetaCLIP-B/16), else :data:`DEFAULT_CLIP`."""
    return canonical_name(clip or getattr(method_cls, "default_clip", None) or DEFAULT_CLIP)


def _tiny_clip(quick_gelu: bool = True) -> nn.Module:
    import open_clip
    return open_clip.CLIP(
        embed_dim=64,
        vision_cfg=dict(image_size=224, layers=3, width=96, head_width=32, patch_size=16),
        text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2),
        quick_gelu=quick_gelu)


def _is_torchscript(path: str) -> bool:
    import zipfile
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") for n in z.namelist())


def _read_state_dict(path: str) -> dict:
    """OpenAI `.pt` archive (TorchScript), or a state_dict in `.pt/.pth/.bin/.safetensors`."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path)
    if _is_torchscript(path):  # OpenAI releases are TorchScript archives
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {k: v for k, v in torch.jit.load(path, map_location="cpu").state_dict().items()}
    sd = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise WeightsError(f"{path}: not a CLIP state_dict (got {type(sd).__name__})")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}


def _random_init_(model: nn.Module, seed: int) -> None:
    """Deterministic re-initialisation that does not depend on the global RNG."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
            elif name.endswith("logit_scale"):
                p.fill_(torch.log(torch.tensor(100.0)).item())
            elif "ln" in name.split(".")[-2] or "norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.02 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=g) if p.ndim == 1 and "embedding" in name
                        else 0.02 * torch.randn(p.shape, generator=g))


@dataclass(frozen=True)
class ClipInfo:
    name: str
    patch: int
    width: int
    heads: int
    layers: int
    grid: int          # pretraining grid G (224 / patch)
    embed_dim: int


class ClipBackbone(nn.Module):
    """open_clip CLIP + the access methods ovss needs. Works in the dtype of its weights."""

    def __init__(self, model: nn.Module, name: str, weights_id: str):
        super().__init__()
        self.model = model.eval()
        self.model.requires_grad_(False)
        self.name = name
        self.weights_id = weights_id
        v = model.visual
        blk = v.transformer.resblocks[0]
        patch = v.conv1.kernel_size[0]
        width = v.conv1.out_channels
        self.info = ClipInfo(name=name, patch=patch, width=width, heads=blk.attn.num_heads,
                             layers=len(v.transformer.resblocks), grid=int(round((v.positional_embedding.shape[0] - 1) ** 0.5)),
                             embed_dim=v.proj.shape[1])
        self._pe_cache: dict = {}

    # ---------------------------------------------------------------- properties
    @property
    def visual(self):
        return self.model.visual

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.visual.transformer.resblocks

    @property
    def dtype(self) -> torch.dtype:
        return self.model.visual.conv1.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.visual.conv1.weight.device

    # ---------------------------------------------------------------- image tower pieces
    def pos_embed(self, h: int, w: int, mode: str = "A") -> torch.Tensor:
        """Positional embedding (1 + h*w, D) for an h x w patch grid (spec §1.3).

        A: bicubic with scale factors ((h+0.1)/G, (w+0.1)/G) passed to the kernel; skipped (used as is) whenever
           h*w == G*G, like the official CLIP-side code.
        B: bilinear to size (h, w), then the whole embedding rounded through fp16 (CLIPer).
        D: bicubic to size with antialias=True (PIL-style, a = -0.5, also when up-sampling); skipped whenever
           h*w == G*G (GEM).
        S: bilinear to size (h, w); skipped at the G x G grid (CLIP Surgery's in-place resize, done once per grid).
        """
        key = (h, w, mode)
        if key in self._pe_cache:
            return self._pe_cache[key]
        pe = self.visual.positional_embedding.float()
        G = self.info.grid
        cls, patch = pe[:1], pe[1:]
        grid = patch.reshape(1, G, G, -1).permute(0, 3, 1, 2)
        if mode == "A":
            if h * w == G * G:
                out = pe
            else:
                grid = F.interpolate(grid, scale_factor=((h + 0.1) / G, (w + 0.1) / G), mode="bicubic",
                                     align_corners=False)
                assert grid.shape[-2:] == (h, w), (grid.shape, h, w)
                out = torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(h * w, -1)])
        elif mode == "B":
            grid = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)
            out = torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(h * w, -1)]).half().float()
        elif mode in ("D", "S"):
            if (mode == "D" and h * w == G * G) or (h, w) == (G, G):
                out = pe
            else:
                grid = (F.interpolate(grid, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
                        if mode == "D" else F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False))
                out = torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(h * w, -1)])
        else:
            raise ValueError(f"unknown positional-embedding mode {mode!r}")
        out = out.to(self.dtype)
        self._pe_cache[key] = out
        return out

    def embed(self, x: torch.Tensor, pe: str = "A") -> tuple[torch.Tensor, int, int]:
        """Normalised images (B, 3, H, W) -> tokens after `ln_pre` (B, 1+N, D), grid (h, w).
        Pixels beyond the last full patch are dropped, as in CLIP."""
        v = self.visual
        if min(x.shape[-2:]) < self.info.patch:   # extreme aspect ratios: the 2048 cap leaves a side below one patch
            raise InputError(f"image too thin for CLIP: {x.shape[-1]}x{x.shape[-2]} pixels at the network input, "
                             f"each side needs at least {self.info.patch} (crop or pad the image first)")
        x = v.conv1(x.to(self.dtype))                      # (B, D, h, w)
        B, D, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)                   # (B, N, D) row-major
        cls = v.class_embedding.to(x.dtype).expand(B, 1, D)
        x = torch.cat([cls, x], dim=1) + self.pos_embed(h, w, pe)
        return v.ln_pre(x), h, w

    def run_blocks(self, x: torch.Tensor, start: int = 0, stop: Optional[int] = None) -> torch.Tensor:
        """Blocks start .. stop-1, unmodified (batch-first tokens)."""
        for blk in self.blocks[start:stop]:
            x = blk(x)
        return x

    def qkv(self, idx: int, x: torch.Tensor, normed: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-head q, k, v (B, heads, T, d) of block `idx` from its input x (LN1 applied unless `normed`)."""
        blk = self.blocks[idx]
        u = x if normed else blk.ln_1(x)
        qkv = F.linear(u, blk.attn.in_proj_weight, blk.attn.in_proj_bias)
        B, T, _ = qkv.shape
        nh = self.info.heads
        qkv = qkv.view(B, T, 3, nh, -1).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def attn_out(self, idx: int, o: torch.Tensor) -> torch.Tensor:
        """Heads (B, heads, T, d) -> concatenated and through `out_proj` (with bias): (B, T, D)."""
        blk = self.blocks[idx]
        B, nh, T, d = o.shape
        o = o.transpose(1, 2).reshape(B, T, nh * d)
        return F.linear(o, blk.attn.out_proj.weight, blk.attn.out_proj.bias)

    def residual_mlp(self, idx: int, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """The rest of an unmodified block around attention output `a`: y = x + a; y + MLP(LN2(y))."""
        blk = self.blocks[idx]
        y = x + blk.ls_1(a)
        return y + blk.ls_2(blk.mlp(blk.ln_2(y)))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """`ln_post` then the projection into the joint space (no bias)."""
        v = self.visual
        x = v.ln_post(x)
        return x @ v.proj

    # ---------------------------------------------------------------- text tower
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        import open_clip
        if not hasattr(self, "_tokenizer"):
            self._tokenizer = open_clip.SimpleTokenizer(context_length=self.model.context_length)
        return self._tokenizer(texts)

    @torch.no_grad()
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text features (B, E), not normalised. The text tower is causal, so the batch is cut after its
        longest prompt's end token: exact, and several times faster than the 77-token forward."""
        m = self.model
        tokens = tokens.to(self.device)
        eot = tokens.argmax(dim=-1)                     # the end token has the largest id
        n = int(eot.max()) + 1
        t = tokens[:, :n]
        x = m.token_embedding(t).to(self.dtype) + m.positional_embedding[:n].to(self.dtype)
        x = m.transformer(x, attn_mask=m.attn_mask[:n, :n])
        x = m.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        proj = m.text_projection
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj


def load_clip(name: str = "ViT-B/16", weights: Optional[str] = None, device: Optional[torch.device] = None,
              dtype: torch.dtype = torch.float32, seed: int = 0) -> ClipBackbone:
    """Build CLIP `name` with `weights` (None: download; a path: OpenAI `.pt` or a state_dict in the OpenAI/open_clip
    key layout; "random": deterministic random init)."""
    import open_clip
    name = canonical_name(name)
    arch, key = ARCHS[name]
    if arch is None:   # tiny-test
        if weights not in (None, W.RANDOM):
            raise InputError("clip='tiny-test' only exists with random weights (clip_weights='random')")
        src = W.RANDOM
    else:
        src = W.resolve(key, weights)
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)   # open_clip warns that no pretrained weights were loaded: we load them
    try:
        model = _tiny_clip() if arch is None else open_clip.create_model(arch, pretrained=None, device="cpu")
    finally:
        logging.getLogger().setLevel(quiet)
    if src == W.RANDOM:
        _random_init_(model, seed)
    else:
        try:
            sd = _read_state_dict(src)
        except WeightsError:
            raise
        except Exception as e:  # a corrupt / truncated / non-checkpoint file: a user error, not a traceback
            msg = (str(e).splitlines() or [""])[0][:200]
            raise WeightsError(f"{src}: cannot read it as {name} CLIP weights ({type(e).__name__}: {msg})") from None
        for k in ("input_resolution", "context_length", "vocab_size"):
            sd.pop(k, None)
        try:
            model.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            msg = str(e).splitlines()
            raise WeightsError(f"{src}: not a {name} CLIP checkpoint ({' '.join(msg[:3])[:400]})") from None
    model = model.to(device or "cpu", dtype=dtype)
    if dtype != torch.float32:  # keep LayerNorms in fp32 for stability, like open_clip's LayerNormFp32
        for mod in model.modules():
            if isinstance(mod, nn.LayerNorm):
                mod.float()
                mod.register_forward_pre_hook(lambda m, a: (a[0].float(),))
                mod.register_forward_hook(lambda m, a, out: out.to(dtype))
    return ClipBackbone(model, name, W.identity(src, seed))
