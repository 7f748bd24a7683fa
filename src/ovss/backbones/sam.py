"""Segment Anything (``segment_anything`` package) for Trident and as a ProxyCLIP proxy.

A thin wrapper over ``sam_model_registry`` / ``Sam`` / ``ResizeLongestSide``:

* :meth:`SAM.set_image` reproduces ``SamPredictor.set_image`` (longest side -> 1024 with
  ``int(old * 1024 / max + 0.5)``, the library's own PIL resize, pixel mean/std, zero padding
  bottom/right) and, from the **last encoder block** (a global-attention block), also keeps its attention
  probabilities ``softmax(s QK^T + decomposed rel-pos)`` per head and its per-head values, both cropped
  to the valid grid ``(input_h // 16, input_w // 16)`` on query and key axes (``spec/methods.md`` §2.8
  step 4). The last block is run by :func:`encode_with_last_attention` from the module's own weights and
  ``segment_anything``'s ``add_decomposed_rel_pos``, head-chunked to bound memory;
* :meth:`SAM.predict_torch` / :meth:`SAM.postprocess_masks` = the predictor's prompt encoder + mask
  decoder on a stored :class:`SamImage` (mask prompts are passed through untouched, so the official
  3-D ``1x256x256`` mask input keeps its quirk);
* :class:`SamProxy`: the image encoder's neck output on a 1024x1024 bilinear resize (ProxyCLIP's
  ``sam`` proxy).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsError

SAM_NAMES = ("vit_b", "vit_l", "vit_h")
_ALIASES = {"sam_vitb": "vit_b", "sam_vit_b": "vit_b", "sam_vith": "vit_h", "sam_vitl": "vit_l"}


@dataclass
class SamImage:
    """The state ``SamPredictor.set_image`` leaves behind, plus the last block's attention."""
    features: Optional[torch.Tensor]  # (1, 256, 64, 64) neck output (None: attention-only pass)
    input_size: tuple                 # (h, w) after the longest-side resize, before padding
    original_size: tuple              # (H, W) of the image given to set_image
    attn: Optional[torch.Tensor] = None   # (heads, Nv, Nv) last-block attention probabilities, valid grid
    v: Optional[torch.Tensor] = None      # (heads, vh, vw, head_dim) last-block values, valid grid

    @property
    def valid_grid(self) -> tuple:
        return self.input_size[0] // 16, self.input_size[1] // 16


def _qkv(attn_mod: nn.Module, x: torch.Tensor):
    """Per-head q, k, v (B*heads, H*W, d) of a SAM ``Attention`` module on x (B, H, W, C)."""
    B, H, W, _ = x.shape
    nh = attn_mod.num_heads
    qkv = attn_mod.qkv(x).reshape(B, H * W, 3, nh, -1).permute(2, 0, 3, 1, 4)
    return qkv.reshape(3, B * nh, H * W, -1).unbind(0)


def _rel_terms(attn_mod: nn.Module, q: torch.Tensor, H: int, W: int, rows: int, cols: int):
    """The decomposed relative-position terms of ``add_decomposed_rel_pos`` for the queries of the top-left
    rows x cols part of the H x W grid: (b, rows, cols, H) and (b, rows, cols, W)."""
    from segment_anything.modeling.image_encoder import get_rel_pos
    Rh = get_rel_pos(H, H, attn_mod.rel_pos_h)[:rows]
    Rw = get_rel_pos(W, W, attn_mod.rel_pos_w)[:cols]
    r_q = q.reshape(-1, rows, cols, q.shape[-1])
    return torch.einsum("bhwc,hkc->bhwk", r_q, Rh), torch.einsum("bhwc,wkc->bhwk", r_q, Rw)


def _fused(attn_mod: nn.Module, q, k, v, B: int, H: int, W: int, head_chunk: int = 4) -> torch.Tensor:
    """softmax(s·QKᵀ + rel-pos)·V through ``scaled_dot_product_attention`` with the relative positions as an
    additive mask, then ``proj``: (B, H, W, C)."""
    nh = attn_mod.num_heads
    outs = []
    step = head_chunk * B if H * W > 1024 else B * nh        # chunk only the big (global) attentions
    for s in range(0, B * nh, step):
        qc = q[s:s + step]
        mask = None
        if attn_mod.use_rel_pos:
            rel_h, rel_w = _rel_terms(attn_mod, qc, H, W, H, W)
            # contiguous terms make the broadcast sum row-major, so the view below copies nothing
            mask = (rel_h.contiguous().unsqueeze(-1) + rel_w.contiguous().unsqueeze(-2))
            mask = mask.view(qc.shape[0], H * W, H * W)
        outs.append(F.scaled_dot_product_attention(qc, k[s:s + step], v[s:s + step], attn_mask=mask,
                                                   scale=attn_mod.scale))
    o = torch.cat(outs).view(B, nh, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
    return attn_mod.proj(o)


def fused_attention(attn_mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A SAM ``Attention`` forward through ``scaled_dot_product_attention``, the decomposed relative
    positions passed as an additive mask: the library's ``softmax(s·QKᵀ + rel-pos)·V`` (same numbers up to
    float rounding) without its explicit N x N intermediates — about twice as fast for the global blocks."""
    B, H, W, _ = x.shape
    q, k, v = _qkv(attn_mod, x)
    return _fused(attn_mod, q, k, v, B, H, W)


def last_block_attention(attn_mod: nn.Module, x: torch.Tensor, valid: tuple, need_output: bool = True,
                         head_chunk: int = 2):
    """Global attention of a SAM ``Attention`` module on x (1, H, W, C) returning (output (1, H, W, C) or None,
    probabilities (heads, Nv, Nv), values (heads, vh, vw, d)), probabilities and values cropped to the
    top-left ``valid`` = (vh, vw) grid on both axes (no renormalisation). The probabilities are the library's
    ``softmax((s·q)kᵀ + rel-pos)`` over all H·W keys, computed for the valid query rows only."""
    B, H, W, _ = x.shape
    assert B == 1
    nh = attn_mod.num_heads
    vh, vw = valid
    q, k, v = _qkv(attn_mod, x)
    qv = q.view(nh, H, W, -1)[:, :vh, :vw].reshape(nh, vh * vw, -1)
    probs = []
    for s in range(0, nh, head_chunk):
        qc = qv[s:s + head_chunk]
        a = (qc * attn_mod.scale) @ k[s:s + head_chunk].transpose(-2, -1)          # (c, Nv, H*W)
        if attn_mod.use_rel_pos:
            rel_h, rel_w = _rel_terms(attn_mod, qc, H, W, vh, vw)
            a = a.view(-1, vh, vw, H, W) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]
        a = a.view(-1, vh * vw, H * W).softmax(dim=-1)
        probs.append(a.view(-1, vh * vw, H, W)[:, :, :vh, :vw].reshape(-1, vh * vw, vh * vw).clone())
        del a
    vals = v.view(nh, H, W, -1)[:, :vh, :vw].contiguous()
    out = _fused(attn_mod, q, k, v, B, H, W) if need_output else None
    return out, torch.cat(probs, 0), vals


def fused_block(blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A SAM encoder ``Block`` forward with :func:`fused_attention` (window partitioning from the library)."""
    from segment_anything.modeling.image_encoder import window_partition, window_unpartition

    shortcut = x
    x = blk.norm1(x)
    if blk.window_size > 0:
        H, W = x.shape[1], x.shape[2]
        x, pad_hw = window_partition(x, blk.window_size)
    x = fused_attention(blk.attn, x)
    if blk.window_size > 0:
        x = window_unpartition(x, blk.window_size, pad_hw, (H, W))
    x = shortcut + x
    return x + blk.mlp(blk.norm2(x))


def encode(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``ImageEncoderViT.forward`` with fused attention: the neck output."""
    t = encoder.patch_embed(x)
    if encoder.pos_embed is not None:
        t = t + encoder.pos_embed
    for blk in encoder.blocks:
        t = fused_block(blk, t)
    return encoder.neck(t.permute(0, 3, 1, 2))


def encode_with_last_attention(encoder: nn.Module, x: torch.Tensor, valid: tuple, need_features: bool = True):
    """``ImageEncoderViT.forward`` with the last block's attention captured (see above); the other blocks
    use :func:`fused_attention`. Without `need_features` the last block stops after its attention
    probabilities and values (no output, MLP or neck): features None."""
    t = encoder.patch_embed(x)
    if encoder.pos_embed is not None:
        t = t + encoder.pos_embed
    for blk in encoder.blocks[:-1]:
        t = fused_block(blk, t)
    blk = encoder.blocks[-1]
    if blk.window_size > 0:  # pragma: no cover - every released SAM ends with a global block
        raise ValueError("the last SAM encoder block is windowed; cannot capture global attention")
    y, probs, vals = last_block_attention(blk.attn, blk.norm1(t), valid, need_output=need_features)
    if not need_features:
        return None, probs, vals
    t = t + y
    t = t + blk.mlp(blk.norm2(t))
    return encoder.neck(t.permute(0, 3, 1, 2)), probs, vals


class SAM(nn.Module):
    """A loaded SAM model with predictor-style helpers that keep no hidden state."""

    def __init__(self, model: nn.Module, name: str):
        super().__init__()
        from segment_anything.utils.transforms import ResizeLongestSide
        self.model, self.name = model, name
        self.transform = ResizeLongestSide(model.image_encoder.img_size)
        self.heads = model.image_encoder.blocks[-1].attn.num_heads
        self.patch_size = 16

    @property
    def device(self) -> torch.device:
        return self.model.pixel_mean.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.image_encoder.patch_embed.proj.weight.dtype

    def prepare(self, image: np.ndarray) -> tuple[torch.Tensor, tuple]:
        """uint8 RGB (H, W, 3) -> (padded normalised (1, 3, 1024, 1024), input_size), as set_image does."""
        resized = self.transform.apply_image(np.ascontiguousarray(image))
        t = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
        input_size = tuple(t.shape[-2:])
        return self.model.preprocess(t.float()), input_size

    @torch.no_grad()
    def set_image(self, image: np.ndarray, with_attention: bool = True, with_features: bool = True) -> SamImage:
        """Image embedding of a uint8 RGB image (H, W, 3); with the last block's attention when asked.
        ``with_features=False`` (attention only) skips the last block's output, MLP and the neck."""
        x, input_size = self.prepare(image)
        x = x.to(self.dtype)
        valid = (input_size[0] // 16, input_size[1] // 16)
        if with_attention:
            feats, probs, vals = encode_with_last_attention(self.model.image_encoder, x, valid, with_features)
        else:
            feats, probs, vals = encode(self.model.image_encoder, x), None, None
        return SamImage(feats, input_size, tuple(image.shape[:2]), probs, vals)

    @torch.no_grad()
    def predict_torch(self, state: SamImage, point_coords=None, point_labels=None, boxes=None,
                      mask_input=None, multimask_output: bool = False):
        """``SamPredictor.predict_torch`` on `state` (coordinates already in the 1024 frame).
        Returns (low-res mask logits (B, C, 256, 256), predicted IoU (B, C)); prompt encoder and mask
        decoder run in fp32."""
        m = self.model
        points = (point_coords, point_labels) if point_coords is not None else None
        sparse, dense = m.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        low_res, iou = m.mask_decoder(image_embeddings=state.features.float(),
                                      image_pe=m.prompt_encoder.get_dense_pe(),
                                      sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                      multimask_output=multimask_output)
        return low_res, iou

    @torch.no_grad()
    def decode(self, state: SamImage, sparse: torch.Tensor, dense: torch.Tensor, multimask_output: bool = False):
        """Mask decoder on prompt embeddings already computed (sparse (B, n, 256), dense (B or 1, 256, 64, 64))
        -> (low-res logits, IoU). Regions of several prompts can be decoded in one batch."""
        m = self.model
        return m.mask_decoder(image_embeddings=state.features.float(), image_pe=m.prompt_encoder.get_dense_pe(),
                              sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                              multimask_output=multimask_output)

    def postprocess_masks(self, low_res: torch.Tensor, state: SamImage) -> torch.Tensor:
        """Low-res logits -> logits at the state's original size (bilinear to 1024, crop, bilinear)."""
        return self.model.postprocess_masks(low_res, state.input_size, state.original_size)

    @torch.no_grad()
    def neck(self, x: torch.Tensor) -> torch.Tensor:
        """Image-encoder (neck) output of an already normalised, already 1024x1024 batch."""
        return encode(self.model.image_encoder, x.to(self.dtype))


class SamProxy(nn.Module):
    """ProxyCLIP's ``sam`` proxy: ImageNet-normalised crops, bilinear to 1024x1024, neck output 256x64x64."""

    patch_size = 16

    def __init__(self, sam: SAM):
        super().__init__()
        self.sam = sam
        self.name = f"sam_{sam.name.replace('_', '')}"
        self.embed_dim = 256
        self.input_size = sam.model.image_encoder.img_size

    def grid(self, H: int, W: int, size=None) -> tuple[int, int]:
        return self.input_size // 16, self.input_size // 16

    @torch.no_grad()
    def features(self, x: torch.Tensor, size=None) -> torch.Tensor:
        x = F.interpolate(x.to(self.sam.dtype), size=(self.input_size, self.input_size), mode="bilinear",
                          align_corners=False)
        return self.sam.neck(x)

    forward = features


def load_sam(name: str = "vit_b", weights: Optional[str] = None, device="cpu",
             dtype: torch.dtype = torch.float32, seed: int = 0) -> SAM:
    """SAM `name` (vit_b | vit_l | vit_h) with `weights` ("random", a ``segment_anything`` checkpoint path,
    or None = download/cache via ``ovss.weights``). The image encoder is cast to `dtype`; prompt encoder
    and mask decoder stay fp32 (as Trident runs them)."""
    from segment_anything import sam_model_registry

    from .. import weights as W
    from .vfm import random_state_dict

    name = _ALIASES.get(name, name)
    if name == "tiny-test":           # a small random SAM (2 blocks, width 32) for fast tests
        if weights not in (None, "random"):
            raise WeightsError("sam='tiny-test' only exists with random weights (sam_weights='random')")
        from segment_anything.build_sam import _build_sam
        with torch.random.fork_rng():
            model = _build_sam(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
                               encoder_global_attn_indexes=[1])
        path = "random"
    elif name not in SAM_NAMES:
        raise WeightsError(f"unknown SAM model {name!r}; known: {', '.join(SAM_NAMES)}")
    else:
        path = W.resolve(f"sam:{name}", weights)
        with torch.random.fork_rng():   # the library's init draws from the global RNG; keep the user's intact
            model = sam_model_registry[name](checkpoint=None)
    if path == "random":
        depth = len(model.image_encoder.blocks)
        sd = random_state_dict(model, seed=seed, depth=depth)
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise WeightsError(f"cannot read SAM weights {path!r}: {type(e).__name__}: {e}") from None
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise WeightsError(f"SAM {name}: weights {path!r} do not match the architecture: "
                           f"{str(e).splitlines()[0][:300]}") from None
    model = model.to(device).eval().requires_grad_(False)
    model.image_encoder.to(dtype)
    return SAM(model, name)
