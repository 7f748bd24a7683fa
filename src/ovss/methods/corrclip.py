"""CorrCLIP (Zhang et al., ICCV 2025): CLIP's last-block patch correlations rebuilt from region masks and DINO
(spec methods/corrclip.md).

Per window (zero-padded, centred, to a multiple of 56; its region-mask crop padded with the value 10000):

1. DINO's last-block ``q + k`` (normalised) gives the cosine affinity ``Sim``; the region masks at DINO's grid
   are merged where the regions' mean features are close (DBSCAN, eps 0.2, min_samples 1);
2. ``Sim`` is kept inside each merged region, and for pairs touching the unsegmented (minimum-value) region
   where it exceeds the window's mean; ``A = softmax_r(τ·Sim)``;
3. CLIP runs with one extra *mask class token* per region (semantic branch: each sees the class token and
   its region, in every block); the last block is reduced to ``A·V`` for the block-10 tokens (main) and the
   mean of blocks 5..9 (spatial), and the mask tokens' last-block outputs are broadcast to their regions;
4. ``ln_post`` on each, ``main + α·spatial + β·semantic``, projection, cosine logits, window averaging;
5. labels: argmax, background threshold, then every region (of the original-size map, minimum excluded) takes
   its most frequent label.

The windows of an image go through DINO and CLIP as one batch (regions padded to the batch's largest count).
Region masks come from ``region_masks_dir`` (``<image stem>.npz``, key ``instance_mask``: the official format)
or from a mask generator (``ovss.backbones.mask_generator``) run on the original image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..backbones.mask_tokens import block_with_mask_tokens, region_token_mask
from ..errors import InputError
from ..images import LoadedImage
from ..inference.probs import threshold_labels
from ..inference.region_masks import mask_path, read_region_masks
from ..inference.regions import dense_ranks, merge_regions, region_mode, scope_mask
from ..inference.splice import to_imagenet
from ..inference.window import slide_inference
from .base import Prediction
from .dense import DenseMethod, DenseParams, presets_table

BENCHES = ("voc21", "voc20", "context60", "context59", "coco_object", "coco_stuff", "cityscapes", "ade20k")
# the official configs' region-mask folders (data/region_masks/<folder>) per benchmark
MASK_FOLDERS = {"voc21": "voc", "voc20": "voc", "context60": "context", "context59": "context",
                "coco_object": "coco", "coco_stuff": "coco", "cityscapes": "city", "ade20k": "ade"}
PAD_VALUE = 10000      # region value of a window's padding; merged regions get PAD_VALUE + component


@dataclass
class CorrCLIPParams(DenseParams):
    slide_crop: int = 336
    pad_multiple: int = 56
    vfm: str = "dino_vitb8"                     # used when the Segmenter gets no vfm=
    region_masks_dir: Optional[str] = None      # folder of <image stem>.npz ('instance_mask'); None = generate
    mask_generator: str = "auto"                # ovss.backbones.mask_generator kind (when region_masks_dir is None)
    mask_generator_weights: Optional[str] = None
    mask_generator_model: Optional[str] = None  # its model (None: the kind's default, SAM 2 Hiera-L / SAM ViT-H)
    alpha: float = 1.0                          # weight of the spatial branch (hard-coded ALPHA)
    beta: float = 0.5                           # weight of the semantic branch (BETA)
    tau: float = 4.0                            # multiplier of the DINO similarity before the softmax (TAU)
    merge_eps: float = 0.2                      # DBSCAN eps of the mask merging (min_samples = 1)


PRESETS = presets_table(
    short={b: 336 for b in BENCHES} | {"cityscapes": 448, "ade20k": 448},
    slide={b: (336, 112) for b in BENCHES} | {"cityscapes": (224, 112)},
    scale={"*": 40.0}, thd={"voc21": 0.2, "context60": 0.15, "coco_object": 0.25},
    files=("corrclip", "proxyclip"), pad_multiple=56)


def spatial_layers(depth: int) -> range:
    """Blocks whose outputs are averaged for the spatial branch: L−2−n … L−3 with n = 5 (12 layers), 12 (24),
    28 (32), else L−4. (The official code has no such block for L < 5; ovss then uses block L−3 alone.)"""
    n = {12: 5, 24: 12, 32: 28}.get(depth, depth - 4)
    lo, hi = depth - 2 - n, depth - 3
    return range(lo, hi + 1) if lo <= hi else range(hi, hi + 1)


def nearest(m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Integer maps (B, H, W) -> (B, *size), PyTorch 'nearest' (source ⌊dst·in/out⌋) computed on float32 values
    as the official code does."""
    if tuple(m.shape[-2:]) == tuple(size):
        return m
    return F.interpolate(m[:, None].float(), size=size, mode="nearest")[:, 0].long()


class CorrCLIP(DenseMethod):
    name = "corrclip"
    needs = ("clip", "vfm")
    paper = ("Zhang et al., CorrCLIP: Reconstructing Patch Correlations in CLIP for Open-Vocabulary Semantic "
             "Segmentation, ICCV 2025")
    repo = "zdk258/CorrCLIP"
    default_clip = "MetaCLIP-B/16"       # the official configs' metaclip_fullcc ViT-B-16-quickgelu
    summary = "last CLIP block attends with DINO correlations restricted to (merged) region masks; mask class tokens"
    Params = CorrCLIPParams
    PRESETS = PRESETS
    DEFAULT_PRESET = dict(short_side=336, slide_crop=336, slide_stride=112, logit_scale=40.0, pad_multiple=56)

    def __init__(self, params, models, classes):
        super().__init__(params, models, classes)
        self.vfm = models.vfm
        if getattr(self.vfm, "vit", None) is None:
            raise InputError(f"corrclip needs a ViT vision foundation model (dino_vitb8, dino_vits8, ...), "
                             f"not {getattr(self.vfm, 'name', self.vfm)!r}")
        if params.pad_multiple <= 0:   # the official 56: DINO's grid is exact, CLIP's drops the last pixels
            raise InputError(f"corrclip: pad_multiple={params.pad_multiple} must be positive (official: 56)")
        self._generator = None

    # ------------------------------------------------------------------ region masks
    def region_map(self, image: LoadedImage) -> np.ndarray:
        """The (H, W) int32 region map of the original image: from `region_masks_dir`, else generated."""
        p = self.params
        if p.region_masks_dir:
            name = image.path or (None if image.name.startswith("<") else image.name)
            if not name:
                raise InputError(f"corrclip: region_masks_dir is set, so the image needs a file name to find its "
                                 f"<stem>.npz, but {image.name} has none; pass the image as a file path, or "
                                 f"region_masks_dir=None to generate the masks")
            return read_region_masks(mask_path(p.region_masks_dir, name), image.size)
        if self._generator is None:
            from ..backbones.mask_generator import load_mask_generator
            self._generator = load_mask_generator(p.mask_generator, p.mask_generator_weights,
                                                  device=self.models.device, dtype=self.models.dtype,
                                                  model=p.mask_generator_model)
        out = np.asarray(self._generator(image.rgb))
        if out.shape != tuple(image.size):
            raise InputError(f"corrclip: the mask generator returned a {out.shape} map for a {image.size} image")
        return out.astype(np.int32)

    # ------------------------------------------------------------------ window forward
    def dino_affinity(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Windows (B, 3, H, W) -> L2-normalised q + k of DINO's last block (B, I·J, C) float32, grid (I, J)."""
        vfm = self.vfm
        blocks = vfm.vit.blocks
        t = vfm.tokens(to_imagenet(x.float()).to(x.dtype), stop=len(blocks) - 1)
        blk = blocks[-1]
        qkv = blk.attn.qkv(blk.norm1(t))[:, 1 + vfm.cfg.reg_tokens:]
        C = qkv.shape[-1] // 3
        f = F.normalize((qkv[..., :C] + qkv[..., C:2 * C]).float(), dim=-1)
        I, J = vfm.grid(*x.shape[-2:])
        return f, I, J

    def correlation(self, x: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """Windows x (B, 3, H, W) and their region crops m (B, H, W) -> the reconstructed attention A
        (B, L, L) float32, the merged region map (B, I, J) and the DINO grid (§4.1-§4.3)."""
        f, I, J = self.dino_affinity(x)
        sim = f @ f.transpose(1, 2)
        mv = merge_regions(nearest(m, (I, J)).flatten(1), f, self.params.merge_eps, PAD_VALUE)
        allowed = scope_mask(mv, sim)
        attn = (self.params.tau * sim.masked_fill(~allowed, float("-inf"))).softmax(dim=-1)
        return attn, mv.view(-1, I, J), I, J

    def patch_features_regions(self, x: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Windows (B, 3, H, W) + region crops (B, H, W) -> joint-space features (B, I·J, E) on DINO's grid."""
        p = self.params
        attn, mv, I, J = self.correlation(x, m)
        clip = self.clip
        t, h, w = clip.embed(x, pe="A")
        B, _, D = t.shape
        ranks, counts = dense_ranks(nearest(mv, (h, w)).flatten(1))      # region of each CLIP cell
        n = int(counts.max())
        mask = region_token_mask(ranks, n)
        mct = t[:, :1].expand(B, n, D)
        last = len(clip.blocks) - 1
        keep = spatial_layers(len(clip.blocks))
        spatial = 0.0
        for i in range(last):
            t, mct = block_with_mask_tokens(clip, i, t, mct, mask)
            if i in keep:
                spatial = spatial + t
        spatial = spatial / len(keep)
        _, sem = block_with_mask_tokens(clip, last, t, mct, mask, image_tokens=False)   # (B, n, D)

        # main and spatial branch: A·V on the bilinearly resized values, out_proj (§4.5)
        blk = clip.blocks[last]
        z = blk.ln_1(torch.cat([t, spatial.to(t.dtype)])[:, 1:])
        v = F.linear(z, blk.attn.in_proj_weight[2 * D:], blk.attn.in_proj_bias[2 * D:])
        v = v.transpose(1, 2).reshape(2 * B, D, h, w)
        if (h, w) != (I, J):
            v = F.interpolate(v, size=(I, J), mode="bilinear", align_corners=False)
        v = v.flatten(2).transpose(1, 2).view(2, B, I * J, D)
        o = F.linear(attn.to(v.dtype) @ v, blk.attn.out_proj.weight, blk.attn.out_proj.bias)

        # semantic branch: each DINO patch takes the token of its CLIP cell's region
        cell = nearest(ranks.view(B, h, w), (I, J)).flatten(1)
        x_sem = torch.gather(sem, 1, cell[..., None].expand(-1, -1, D))
        ln = clip.visual.ln_post
        y = ln(o[0]) + p.alpha * ln(o[1]) + p.beta * ln(x_sem)
        return y @ clip.visual.proj, I, J

    def window_logits_regions(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Windows (B, 3, H, W) + region crops (B, 1, H, W) -> cosine logits up-sampled to the window size
        (B, Q, H, W)."""
        f, I, J = self.patch_features_regions(x, m[:, 0])
        f = f / f.norm(dim=-1, keepdim=True)
        cos = (f @ self.text.T.to(f.dtype)).transpose(1, 2).reshape(f.shape[0], -1, I, J)
        return F.interpolate(cos.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)

    def cosine_logits_regions(self, x: torch.Tensor, regions: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Network input (1, 3, H, W) and its region map (H, W) -> cosine logits (Q, h0, w0) at the original size:
        sliding windows (batched; slide_crop 0 = one window), each padded to `pad_multiple`, the mask crop with
        PAD_VALUE."""
        p = self.params
        crop, stride = (p.slide_crop, p.slide_stride) if p.slide_crop > 0 else (max(x.shape[-2:]),) * 2
        cos = slide_inference(x, crop, stride, self.window_logits_regions, pad_multiple=p.pad_multiple,
                              batch_size=max(1, p.window_batch), aux=regions[None], aux_pad=PAD_VALUE)
        return F.interpolate(cos[None], size=size, mode="bilinear", align_corners=False)[0]

    @torch.inference_mode()
    def forward(self, image: LoadedImage) -> Prediction:
        regions = torch.from_numpy(self.region_map(image)).to(self.models.device).long()
        x = self.preprocess(image)
        cos = self.cosine_logits_regions(x, nearest(regions[None], tuple(x.shape[-2:]))[0], image.size)
        logp = self.class_scores(cos)
        labels = threshold_labels(logp, self.params.prob_thd)
        labels = region_mode(labels, regions, logp.shape[0])
        return Prediction(logits=logp.float().cpu(), labels=labels.cpu())


METHODS = {"corrclip": CorrCLIP}
