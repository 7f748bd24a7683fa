"""CLIPtrase (Shao et al., ECCV 2024): self-correlation recovery in the last block plus patch clustering and mask
voting (spec methods.md §2.6, protocols.md §2.2, §3.8; official leaves162/CLIPtrase `clip_self_correlation.py`).

Pipeline on one image:
1. PIL `Resize(S, bicubic)` (shorter side -> S, longer side `int(S*long/short)`) and, under a benchmark preset,
   `CenterCrop(S)`; ToTensor + CLIP mean/std.
2. CLIP ViT with PE-A: blocks 0..L-3 unchanged; block L-2 unchanged but its per-head q, k, v also give the
   self-correlation W_sc (cosine, averaged over heads and the q/k/v branches); the last block uses the qkv-sum
   attention (three row-softmaxes added) with residual and MLP kept; `ln_post`, `proj`, L2 normalisation.
3. Query logits `exp(logit_scale) * cos` on the grid, bilinear to the output size; VOC20 multiplies each query's map
   by its CLS-token logit; max over a class's synonyms (the background words are the synonyms of one class
   "background", so the official "every index >= C -> C" is this reduction) and argmax -> pre-vote labels. Ties
   (argmax and vote) rank a class named "background" last, as the official order [classes; background words]
   does; under a preset the background is class 0 (ovss's benchmark convention, which the dataset readers follow).
4. DBSCAN on the rows of G = max(W_sc[1:, 1:] - W_sc[0, 1:], 0); cluster mean maps, bilinear x4, median filter 7,
   bilinear to the output size, argmax -> one cluster per pixel; each cluster takes its most frequent pre-vote label.

Output size: under a preset (`center_crop=True`) the S x S crop, as the official evaluation (`target_transform`
crops the ground truth the same way). With `preset=None` (`center_crop=False`) the whole image is resized (shorter
side S, no crop), and the logit and cluster maps are up-sampled straight to the original image size, where the
vote happens; DBSCAN's eps is then scaled by sqrt(N / (S/p)^2) (`scale_eps`), N the number of patches, because
the rows being clustered have N entries and their distances grow like sqrt(N) (the official 224 -> 336 settings
scale eps 0.7 -> 1.1 for N 196 -> 441, ratio 1.57 vs sqrt 1.5); for a square input this factor is 1. The
longer side is capped at `long_side_cap` (1344 = 4 x 336 by default, at most 21 x 84 patches) so that panoramas do
not blow up the N x N correlation matrix. preset=None uses the 336 setting (eps 1.1, min_samples 7), the better one
in the supplementary's tables.

`predict_logits` returns log vote shares: channel c of a pixel is log(share of the pixel's cluster whose pre-vote
label is c) (shares floored at 1e-8; the winner lifted one float32 ulp above its row maximum), so the argmax is
the voted label, ties included. Without any DBSCAN cluster the labels are the pre-vote argmax and the logits the
pre-vote class logits (the label's channel lifted the same way where "background" ties with a class).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..backbones.attention import last_block
from ..errors import InputError
from ..images import LoadedImage
from ..inference.clustering import (channel_argmax, cluster_masks, dbscan_labels, denoise, self_correlation,
                                   lift_winner, single_thread, vote, vote_logits)
from ..inference.resize import clip_to_tensor
from ..text import ClassList, encode_queries, load_templates
from ..text.classes import parse_lines
from ..text.templates import resource_path
from .base import Method, Models, Prediction

# ovss benchmark -> (CLIPtrase label file stem, background file stem or None), resources/classnames/official/cliptrase
SETS = {
    "voc21": ("voc21", "voc21"), "voc20": ("voc20", None), "context60": ("pc60", "pc60"),
    "context59": ("pc59", None), "coco_object": ("coco80", "coco80"), "coco_stuff": ("coco171", None),
    "ade20k": ("ade150", None), "context459": ("pc459", None), "ade847": ("adefull", None),
}


def _official(name: str) -> str:
    return resource_path("classnames", "official", "cliptrase", name)


@dataclass
class CLIPtraseParams:
    image_size: int = 224                # S: shorter side after the resize (and crop size under a preset)
    eps: float = 0.7                     # DBSCAN eps (Euclidean); 1.1 in the 336 setting
    min_samples: int = 3                 # DBSCAN min_samples (point itself included); 7 in the 336 setting
    center_crop: bool = True             # CenterCrop(S) and outputs at S x S (benchmark protocol); False: whole image
    cls_weighting: bool = False          # VOC20: multiply each query map by its CLS-token logit
    logit_scale: Optional[float] = None  # None: exp of the loaded CLIP's logit_scale (100 for OpenAI weights)
    ratio: int = 4                       # cluster maps up-sampled x ratio before the median filter
    median_size: int = 7                 # median filter size (2*ratio - 1 in the official code)
    scale_eps: bool = False              # eps x sqrt(N / (S/p)^2): aspect-ratio-free eps for whole images
    long_side_cap: Optional[int] = None  # whole-image mode: longer side at most this (bounds the N x N correlations)
    templates: str = "imagenet"
    class_format: str = "ovss"
    classes_file: Optional[str] = None   # the preset's label file
    background_file: Optional[str] = None  # the preset's background words, appended as one last class


def _preset(bench: str) -> dict:
    labels, bg = SETS[bench]
    return dict(image_size=224, eps=0.7, min_samples=3, center_crop=True, cls_weighting=bench == "voc20",
                classes_file=_official(f"{labels}_labels.txt"),
                background_file=_official(f"{bg}_background.txt") if bg else None,
                class_format="sclip" if bg else "lines")


PRESETS = {bench: _preset(bench) for bench in SETS}


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        lines = [ln.rstrip("\r\n") for ln in f.read().split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


# ---------------------------------------------------------------------------------------------- geometry
def short_side_size(w: int, h: int, size: int, long_cap: Optional[int] = None, min_side: int = 1) -> tuple[int, int]:
    """(new w, new h) of torchvision `Resize(size)`: shorter side -> size, longer side int(size * long / short).
    With `long_cap` (ovss's whole-image mode only) a longer side beyond the cap is brought down to it instead,
    the shorter side int(cap * short / long), at least `min_side`."""
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    if long_cap and new_long > long_cap:
        new_short, new_long = max(min_side, int(long_cap * short / long)), long_cap
    return (new_short, new_long) if w <= h else (new_long, new_short)


def resize_short_side(img: Image.Image, size: int, resample=Image.BICUBIC, long_cap: Optional[int] = None,
                      min_side: int = 1) -> Image.Image:
    """torchvision `Resize(size)` on a PIL image (see `short_side_size`)."""
    nw, nh = short_side_size(*img.size, size, long_cap, min_side)
    if (nw, nh) == img.size:
        return img
    return img.resize((nw, nh), resample)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """torchvision `CenterCrop(size)` for an image at least `size` on both sides (offsets round-half-even)."""
    w, h = img.size
    if w < size or h < size:
        raise InputError(f"center crop {size} larger than the image {w}x{h}")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    if (w, h) == (size, size):
        return img
    return img.crop((left, top, left + size, top + size))


def crop_label_map(gt: np.ndarray, size: int) -> np.ndarray:
    """PIL `Resize(size, nearest)` + `CenterCrop(size)` of an integer label map (any values, dtype kept)."""
    gt = np.asarray(gt)
    img = Image.fromarray(gt.astype(np.int32))          # mode "I": 16-bit labels and -1 survive
    return np.asarray(center_crop(resize_short_side(img, size, Image.NEAREST), size)).astype(gt.dtype)


def tie_order(names) -> Optional[torch.Tensor]:
    """Label order for breaking ties (pre-vote argmax and vote): the official code lists the background words
    after the classes, so a class named "background" ranks last. None when that is already the index order."""
    bg = [i for i, n in enumerate(names) if n.strip().lower() == "background"]
    if len(bg) != 1 or bg[0] == len(names) - 1:
        return None
    return torch.tensor([i for i in range(len(names)) if i != bg[0]] + bg)


class CLIPtrase(Method):
    name = "cliptrase"
    needs = ("clip",)
    paper = ("Shao et al., Explore the Potential of CLIP for Training-Free Open Vocabulary Semantic Segmentation, "
             "ECCV 2024")
    repo = "leaves162/CLIPtrase"
    summary = ("penultimate-block cosine self-correlation -> DBSCAN patch clusters with voting; last block qkv-sum "
               "attention, residual + FFN kept")
    Params = CLIPtraseParams
    PRESETS = PRESETS
    DEFAULT_PRESET = dict(image_size=336, eps=1.1, min_samples=7, center_crop=False, scale_eps=True,
                          long_side_cap=1344)

    @classmethod
    def default_classes(cls, params: CLIPtraseParams):
        """The preset's classes: the label file's names; for VOC21, Context60 and COCO-Object preceded by one class
        "background" whose synonyms are the background words. Background is class 0 as in ovss's benchmarks (the
        dataset readers map CLIPtrase's last-index background to 0); the official tie-breaking, where background
        comes last, is kept by `tie_order`."""
        if not params.classes_file:
            return None
        lines = _read_lines(params.classes_file)
        cl = parse_lines(lines, params.class_format, source=params.classes_file)
        if not params.background_file:
            return cl
        bg = tuple(w for w in _read_lines(params.background_file) if w.strip())
        return ClassList(("background",) + cl.names, bg + cl.queries,
                         (0,) * len(bg) + tuple(c + 1 for c in cl.query_to_class),
                         f"{params.background_file} + {params.classes_file}")

    def __init__(self, params: CLIPtraseParams, models: Models, classes: ClassList):
        super().__init__()
        self.params = params
        self.clip = models.clip
        self.models = models
        self.classes = classes
        if len(self.clip.blocks) < 2:
            raise InputError("cliptrase needs a CLIP with at least 2 blocks")
        if params.image_size < self.clip.info.patch:
            raise InputError(f"cliptrase: image_size={params.image_size} is smaller than one patch")
        self.text = encode_queries(self.clip, classes.queries, load_templates(params.templates),
                                   device=models.device)                      # (Q, E) float32
        q2c = list(classes.query_to_class)
        self.first_query = torch.as_tensor([q2c.index(c) for c in range(len(classes))], device=models.device)
        self.synonyms = [(c, torch.as_tensor([i for i, k in enumerate(q2c) if k == c], device=models.device))
                         for c in range(len(classes)) if q2c.count(c) > 1]
        self.tie_order = tie_order(classes.names)
        scale = params.logit_scale
        self.scale = float(self.clip.model.logit_scale.float().exp()) if scale is None else float(scale)

    # ------------------------------------------------------------------ geometry
    def preprocess(self, image: LoadedImage) -> tuple[torch.Tensor, tuple[int, int]]:
        """The network input (1, 3, H', W') and the output size: (S, S) with the crop, else the original size."""
        S = self.params.image_size
        if self.params.center_crop:
            img = center_crop(resize_short_side(Image.fromarray(image.rgb), S), S)
            out = (S, S)
        else:
            img = resize_short_side(Image.fromarray(image.rgb), S, long_cap=self.params.long_side_cap,
                                    min_side=self.clip.info.patch)
            out = image.size
        x = clip_to_tensor(np.asarray(img)).to(self.models.device, self.models.dtype)
        return x, out

    def target_transform(self, gt: np.ndarray) -> np.ndarray:
        """The ground truth as the official evaluation sees it: PIL Resize(S, nearest) + CenterCrop(S) under a
        preset; unchanged with center_crop=False (outputs are then at the original size)."""
        return crop_label_map(gt, self.params.image_size) if self.params.center_crop else gt

    # ------------------------------------------------------------------ network
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """(1, 3, H, W) -> unit tokens z (1+N, E) float32 (CLS first), W_sc of block L-2 (1+N, 1+N), grid (h, w)."""
        clip = self.clip
        L = len(clip.blocks)
        t, h, w = clip.embed(x, pe="A")
        t = clip.run_blocks(t, 0, L - 2)
        q, k, v = clip.qkv(L - 2, t)                          # block L-2: vanilla forward + side output
        wsc = self_correlation(q, k, v)[0]
        t = clip.residual_mlp(L - 2, t, clip.attn_out(L - 2, F.scaled_dot_product_attention(q, k, v)))
        t = last_block(clip, t, "qkv_sum", residual=True, mlp=True)
        z = clip.head(t[0]).float()
        return z / z.norm(dim=-1, keepdim=True), wsc, h, w

    def class_logits(self, z: torch.Tensor, h: int, w: int, size: tuple[int, int]) -> torch.Tensor:
        """Unit tokens -> class logits (K, H, W) at `size`: query logits up-sampled, (VOC20) times the CLS logits,
        max over synonyms."""
        text = self.text.to(z.device)
        logits = self.scale * (z[1:] @ text.T)                               # (N, Q)
        logits = logits.T.reshape(1, -1, h, w)
        logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)[0]
        if self.params.cls_weighting:
            logits = logits * (self.scale * (z[0] @ text.T))[:, None, None]
        if not self.synonyms:
            return logits
        out = logits.index_select(0, self.first_query)
        for c, idx in self.synonyms:
            out[c] = logits.index_select(0, idx).amax(0)
        return out

    def dbscan_eps(self, n: int) -> float:
        p = self.params
        if not p.scale_eps:
            return p.eps
        ref = (p.image_size // self.clip.info.patch) ** 2
        return p.eps * math.sqrt(n / ref)

    @torch.inference_mode()
    def forward(self, image: LoadedImage) -> Prediction:
        x, size = self.preprocess(image)
        z, wsc, h, w = self.encode(x)
        with single_thread(z.device):
            return self.postprocess(z, wsc, h, w, size)

    def postprocess(self, z: torch.Tensor, wsc: torch.Tensor, h: int, w: int, size: tuple[int, int]) -> Prediction:
        """Steps 5-13 of spec §2.6: pre-vote labels, DBSCAN clusters, vote."""
        p = self.params
        logits = self.class_logits(z, h, w, size)
        pred = channel_argmax(logits, self.tie_order)
        rows = denoise(wsc.float())
        labels = torch.from_numpy(dbscan_labels(rows, self.dbscan_eps(rows.shape[0]), p.min_samples))
        extras = {"n_clusters": int(labels.max()) + 1, "n_noise": int((labels < 0).sum()), "pre_vote": pred.cpu()}
        clusters = cluster_masks(rows, labels.to(rows.device), (h, w), size, p.ratio, p.median_size)
        if clusters is None:
            if self.tie_order is not None:
                logits = lift_winner(logits, pred)
            return Prediction(logits=logits.float().cpu(), labels=pred.cpu(), extras=extras)
        voted, winners, shares = vote(pred, clusters, len(self.classes), self.tie_order)
        clusters = clusters.cpu()
        table = vote_logits(shares, winners)                                 # (n_clusters, K), CPU
        extras["clusters"] = clusters
        return Prediction(logits=table.T[:, clusters], labels=voted.cpu(), extras=extras)


METHODS = {"cliptrase": CLIPtrase}
