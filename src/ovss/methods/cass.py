"""CASS (Kim et al., CVPR 2025): NACLIP's reduced last block whose per-head key–key graphs are blended with
low-rank, re-scaled key–key graphs of DINO, heads paired by a Hungarian matching of eigenvalue profiles; text
embeddings adjusted per image by an object-presence prior, plus a global image–text term (spec
methods/cass.md).

Per window (VOC21: the whole image): DINO sees the window rebuilt as a uint8 image and squashed to a square
(§3); CLIP's last-block keys give graphs ``C_j = s·K_j K_jᵀ``, DINO's keys (resampled to the CLIP grid,
range-matched) give ``G_j``; the heads are paired, each paired ``G`` replaced by its randomized rank-10
approximation (seeded test matrices, §7), re-scaled and range-matched to ``C`` and blended into ``M_a``;
``softmax(M_a + Ω)·V_a``, ``out_proj``, ``ln_post``, ``proj`` (§4). The windows of an image go through CLIP and
DINO as one batch.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..backbones.vfm import IMAGENET_MEAN, IMAGENET_STD, explicit_vit_attention
from ..errors import InputError
from ..inference.spectral import (match_heads, profile_cost, randomized_svd, range_match, rescale_singular_values,
                                  spectral_profile, top_eigenvalues)
from .dense import DenseMethod, DenseParams, presets_table
from .naclip import neighbourhood_bias

ALL = ("voc21", "voc20", "context60", "context59", "coco_object", "coco_stuff", "cityscapes", "ade20k")

# the official inverse normalisation (torchvision Normalize with ImageNet constants and 0.255 (sic) as 3rd std)
_INV_STD = (0.229, 0.224, 0.255)


@dataclass
class CASSParams(DenseParams):
    vfm: str = "dino_vitb8"              # used when the Segmenter gets no vfm=
    gaussian_std: float = 5.0            # Ω of NACLIP
    pamr_steps: int = 10                 # constructor default; every official evaluation (eval.py) uses 0
    whole_double_resize: bool = True     # whole image: logits -> input size -> original size
    global_semantics_weight: float = 0.0  # β: weight of the global image–text similarity in the logits
    mean_vector_weight: float = 0.0      # α: object-presence mix of the adjusted text embedding
    h_threshold: float = 0.0             # Ward-linkage cut grouping similar queries
    eigen_scaling: bool = False          # re-scale the singular values (off for voc20 / cityscapes, the default)
    global_vector: str = "image"         # sliding windows: CLS of the whole image ("image") or of the window ("window")
    scale_factor: float = 10.0           # DINO graph weight multiplier
    k_eigen: int = 20                    # eigenvalues per profile
    rank: int = 10                       # q of the randomized SVD
    niter: int = 2                       # its subspace iterations
    top_k: int = 2                       # patches averaged into the object-presence vector
    seed: Optional[int] = 42             # CPU generator seeded before each image (None: the global RNG, unseeded)


_BETA = {"voc21": 0.1, "voc20": 0.4, "context60": 0.25, "context59": 0.25, "coco_object": 0.25, "coco_stuff": 0.2,
         "cityscapes": 0.1, "ade20k": 0.3}
_ALPHA = {"voc21": 0.03, "voc20": 0.02, "context60": 0.04, "context59": 0.04, "coco_object": 0.01,
          "coco_stuff": 0.02, "cityscapes": 0.03, "ade20k": 0.05}
_H = {"voc21": 0.10, "voc20": 0.10, "context60": 0.09, "context59": 0.09, "coco_object": 0.10, "coco_stuff": 0.02,
      "cityscapes": 0.14, "ade20k": 0.06}

PRESETS = presets_table(
    short={b: 336 for b in ALL} | {"cityscapes": 560},
    slide={b: (224, 112) for b in ALL} | {"voc21": (0, 112)},
    scale={"*": 40.0}, thd={"voc21": 0.1, "context60": 0.1, "coco_object": 0.1},
    files=("sclip_naclip", "sclip"), pamr_steps=0)
for _b in ALL:
    PRESETS[_b].update(global_semantics_weight=_BETA[_b], mean_vector_weight=_ALPHA[_b], h_threshold=_H[_b],
                       eigen_scaling=_b not in ("voc20", "cityscapes"),
                       global_vector="window" if _b == "cityscapes" else "image")


def query_clusters(text: torch.Tensor, h_threshold: float) -> torch.Tensor:
    """Unit text embeddings (Q, E) -> cluster label per query (Q,), 0..C−1: Ward linkage (scipy) on sklearn's float32
    cosine distances, flat clusters cut at `h_threshold` (criterion 'distance'), as the official code groups them."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform
    from sklearn.metrics.pairwise import cosine_distances
    t = text.detach().float().cpu().numpy()
    if len(t) < 2:
        return torch.zeros(len(t), dtype=torch.long)
    Z = linkage(squareform(cosine_distances(t), checks=False), method="ward")
    return torch.from_numpy(fcluster(Z, t=h_threshold, criterion="distance").astype(np.int64) - 1)


def adjust_queries(feats: torch.Tensor, text: torch.Tensor, sim: torch.Tensor, members: torch.Tensor,
                   alpha: float, k: int = 2) -> torch.Tensor:
    """Object-presence adjustment (§5.4): per window and cluster, the member query most similar to the global
    vector (first on ties), ``τ`` = its embedding, ``μ`` = the normalised mean of the k patches most similar to τ,
    replaced by ``normalise((1 − α)τ + αμ)``.

    feats (B, N, E) unit patch features, text (Q, E) unit, sim (B, Q) global similarities, members (C, Q) bool
    -> adjusted text (B, Q, E)."""
    B, N, E = feats.shape
    masked = sim[:, None, :].masked_fill(~members.to(sim.device), float("-inf"))     # (B, C, Q)
    best = masked.argmax(-1)                                                        # (B, C)
    tau = F.normalize(text[best], dim=-1)                                           # (B, C, E)
    top = (feats @ tau.transpose(1, 2)).topk(min(k, N), dim=1).indices              # (B, k, C)
    picked = feats.gather(1, top.reshape(B, -1, 1).expand(-1, -1, E)).view(B, -1, best.shape[1], E)
    mu = F.normalize(picked.mean(1), dim=-1)                                        # (B, C, E)
    adjusted = F.normalize((1 - alpha) * tau + alpha * mu, dim=-1)
    return text.expand(B, -1, -1).clone().scatter_(1, best[..., None].expand(-1, -1, E), adjusted)


def rebuild_uint8(x: torch.Tensor) -> np.ndarray:
    """CLIP-normalised windows (B, 3, H, W) -> the official uint8 images (B, H, W, 3) for DINO: ImageNet inverse
    normalisation with σ₃ = 0.255 (float32), ×255, truncation toward zero (clamped to [0, 255], a no-op for
    8-bit inputs)."""
    mean = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, _INV_STD)], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor([1 / s for s in _INV_STD], dtype=torch.float32).view(1, 3, 1, 1)
    y = (x.detach().float().cpu() - mean) / std * 255
    return y.clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


@contextmanager
def explicit_attention(vit):
    """Run CLIP's ``nn.MultiheadAttention`` blocks without the fused fast path and a timm ViT's attention as the
    explicit ``softmax(q·kᵀ·s)·v`` (`vfm.explicit_vit_attention`), the kernels of the official code (restored
    afterwards).

    The head matching is a Hungarian assignment whose optimum is often tied up to one float32 ulp (profile
    costs of the form f(i) + g(j)); which pairing wins is then decided by the last bit of the keys, so they are
    computed with the official arithmetic."""
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with explicit_vit_attention(vit):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)


class CASS(DenseMethod):
    name = "cass"
    needs = ("clip", "vfm")
    paper = ("Kim et al., Distilling Spectral Graph for Object-Context Aware Open-Vocabulary Semantic "
             "Segmentation, CVPR 2025")
    repo = "MICV-yonsei/CASS"
    summary = "DINO key graphs (low rank, spectrally matched heads) distilled into CLIP's k-k attention + text prior"
    Params = CASSParams
    PRESETS = PRESETS
    DEFAULT_PRESET = dict(short_side=336, slide_crop=224, slide_stride=112, logit_scale=40.0, pamr_steps=0,
                          global_semantics_weight=0.25, mean_vector_weight=0.04, h_threshold=0.09,
                          eigen_scaling=True)

    def __init__(self, params, models, classes):
        super().__init__(params, models, classes)
        self.vfm = models.vfm
        cfg = getattr(self.vfm, "cfg", None)
        if cfg is None or cfg.pe != "dino":
            raise InputError(f"CASS needs a DINO ViT (e.g. vfm='dino_vitb8'), got {getattr(self.vfm, 'name', self.vfm)!r}")
        info = self.clip.info
        if cfg.heads != info.heads or cfg.dim != info.width:
            raise InputError(f"CASS pairs DINO and CLIP heads: {self.vfm.name} has {cfg.heads} heads of width "
                             f"{cfg.dim}, CLIP {info.name} {info.heads} of width {info.width}")
        if params.global_vector not in ("image", "window"):
            raise InputError(f"global_vector={params.global_vector!r}: expected 'image' or 'window'")
        labels = query_clusters(self.text, params.h_threshold)
        self.clusters = labels
        self.members = labels[None, :] == torch.arange(int(labels.max()) + 1)[:, None]   # (C, Q)
        self._gen: Optional[torch.Generator] = None
        self._global: Optional[torch.Tensor] = None

    # ------------------------------------------------------------------ DINO branch (§3)
    def dino_keys(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """CLIP-normalised windows (B, 3, H, W) -> DINO last-block keys (B, heads, h·w, d) resampled (bilinear) from
        the DINO grid of the square-squashed window to the CLIP grid (h, w); float32."""
        from PIL import Image
        B, _, H, W = x.shape
        v = min(H, W)
        sq = np.stack([np.asarray(Image.fromarray(a).resize((v, v))) for a in rebuild_uint8(x)])  # PIL bicubic
        z = torch.from_numpy(sq).to(x.device).permute(0, 3, 1, 2).float() / 255
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        p = self.vfm.patch_size
        c = v - v % p
        z = ((z - mean) / std)[:, :, :c, :c]
        vit = self.vfm.vit
        t = self.vfm.tokens(z, stop=len(vit.blocks) - 1)
        blk = vit.blocks[-1]
        nh, g = self.vfm.cfg.heads, c // p
        k = F.linear(blk.norm1(t), blk.attn.qkv.weight, blk.attn.qkv.bias).float()
        D = k.shape[-1] // 3
        k = k[:, 1:, D:2 * D].reshape(B, g * g, nh, -1).permute(0, 2, 3, 1)          # (B, nh, d, g²)
        k = F.interpolate(k.reshape(B * nh, -1, g, g), size=(h, w), mode="bilinear", align_corners=False)
        return k.reshape(B, nh, -1, h * w).transpose(2, 3)

    # ------------------------------------------------------------------ CLIP with the spectral graph (§4)
    def draws(self, B: int, N: int, q: int, device) -> torch.Tensor:
        """The official random test matrices: one randn(N, q) float64 per window and head, in that order, from the
        per-image CPU generator -> (B, heads, N, q) on `device`."""
        nh = self.clip.info.heads
        R = [torch.randn(N, q, dtype=torch.float64, generator=self._gen) for _ in range(B * nh)]
        return torch.stack(R).view(B, nh, N, q).to(device)

    def spectral_attention(self, k: torch.Tensor, kd: torch.Tensor) -> torch.Tensor:
        """CLIP keys k and range-matched DINO keys kd (B, heads, N, d), float32 -> blended graphs M (B, heads, N, N)
        float32 (§4.4-4.8)."""
        p = self.params
        B, nh, N, d = k.shape
        s = d ** -0.5
        C = (k @ k.transpose(-1, -2)) * s
        G = (kd @ kd.transpose(-1, -2)) * s
        cost = profile_cost(spectral_profile(top_eigenvalues(G, p.k_eigen)),
                            spectral_profile(top_eigenvalues(C, p.k_eigen)))      # rows DINO, columns CLIP
        sigma = match_heads(cost)                                                  # (B, nh)
        weight = 1 - cost.gather(-1, sigma[..., None])[..., 0]                    # (B, nh) float32
        A = G.gather(1, sigma[..., None, None].expand(-1, -1, N, N)).double()      # DINO graph σ(a) for head a
        U, S, V = randomized_svd(A, self.draws(B, N, min(p.rank, N), k.device), p.niter)
        if p.eigen_scaling:
            S = rescale_singular_values(S)
        low = (U * S[..., None, :]) @ V.transpose(-1, -2)
        low.diagonal(dim1=-2, dim2=-1).zero_()
        low = range_match(low, C, dims=(-2, -1))
        wf = (weight * p.scale_factor)[..., None, None]
        return ((wf * low + C) / (wf + 1)).float()

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """Windows (B, 3, H, W) -> patch features (B, N, E) of the spectral last block, the CLS output of the
        unmodified last block (B, E), and the grid (h, w)."""
        clip = self.clip
        last = len(clip.blocks) - 1
        t, h, w = clip.embed(x, pe="A")
        t = clip.run_blocks(t, 0, last)
        cls = clip.head(clip.blocks[last](t)[:, 0])
        _, k, v = clip.qkv(last, t)
        k, v = k[:, :, 1:], v[:, :, 1:]
        kd = range_match(self.dino_keys(x, h, w), k.float(), dims=(1, 2, 3))
        M = self.spectral_attention(k.float(), kd)
        omega = neighbourhood_bias(h, w, float(self.params.gaussian_std))[1:, 1:].to(M.device)
        attn = (M + omega).softmax(-1)
        out = clip.attn_out(last, attn.to(v.dtype) @ v)
        return clip.head(out), cls, h, w

    def global_vector(self, x: torch.Tensor) -> torch.Tensor:
        """CLS output (1, E) of an unmodified CLIP forward of the whole (resized) image."""
        t, _, _ = self.clip.embed(x, pe="A")
        return self.clip.head(self.clip.run_blocks(t)[:, 0])

    # ------------------------------------------------------------------ text side and logits (§5)
    def cosine_grid(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> logits on the patch grid (B, Q, h, w): ``(1 − β)·cos(F̂, T′) + β·cos(ĝ, T)``."""
        p = self.params
        f, cls, h, w = self.features(x)
        if self._global is not None:
            cls = self._global.expand(f.shape[0], -1)
        f = F.normalize(f.float(), dim=-1)
        g = F.normalize(cls.float(), dim=-1)
        text = self.text.float()
        sim = g @ text.T                                                          # (B, Q)
        adjusted = adjust_queries(f, text, sim, self.members, p.mean_vector_weight, p.top_k)
        logits = (f @ adjusted.transpose(1, 2)) * (1 - p.global_semantics_weight) \
            + sim[:, None, :] * p.global_semantics_weight
        return logits.transpose(1, 2).reshape(f.shape[0], -1, h, w)

    def cosine_logits(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        p = self.params
        whole = p.slide_crop > 0 and p.global_vector == "image"
        self._global = self.global_vector(x) if whole else None
        try:
            return super().cosine_logits(x, size)
        finally:
            self._global = None

    def forward(self, image):
        seed = self.params.seed
        self._gen = None if seed is None else torch.Generator().manual_seed(int(seed))
        with explicit_attention(self.vfm.vit):
            return super().forward(image)


METHODS = {"cass": CASS}
