"""CLIPer (Sun et al., ICCV 2025): early-layer fusion (ELF) of CLIP's attention maps and embeddings, then
fine-grained compensation (FGC) with Stable Diffusion self-attention (spec methods.md §2.9).

``cliper_elf`` (the paper's CLIPer*) runs steps 1-11 and 19-21; ``cliper`` adds the diffusion steps 12-18.

Output (spec/api.md): ``1 + N`` channels at the original size: channel 0 a background score
``(1 - max_c valid_c·map_c)²`` (cam_to_label's background score without threshold), channels ``1..N`` the
official per-class maps after its resize and ``map / (max + 1e-5) · score`` normalisation. ``predict`` applies
the official ``cam_to_label`` rule (score threshold, optional min-max normalisation, background threshold).

Class lists: in CLIPer's own file layout (the presets' ``class_format="cliper"``) class 0 is the background
whose words enter the softmax; with any other list, a first class named ``background`` plays that role and
otherwise there are no background words and a ``background`` class is put in front (label 0).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..backbones.attention import attention_probs
from ..errors import InputError
from ..images import LoadedImage
from ..inference.resize import clip_to_tensor
from ..inference.window import window_boxes
from ..text import ClassList, encode_queries, load_templates
from ..text.templates import resource_path
from .base import Method, Models, Prediction

# ----------------------------------------------------------------------------------------------------------
# official configs (protocols.md §3.7): bench -> values, per CLIP model
# ----------------------------------------------------------------------------------------------------------
_COLS = ("size", "slide_crop", "logit_scale", "attention_thr", "select_layer", "score_threshold", "bkg_thre",
         "is_normalize", "templates")
_CAR, _IN80 = "cliper_car", "imagenet"
CONFIGS: dict[str, dict[str, tuple]] = {
    "ViT-B/16": {
        "voc21": (336, 336, 100, 0.1, -1, 0.7, 0.6, True, _CAR),
        "voc20": (336, 0, 100, 0.1, -1, 0.0, 0.001, False, _CAR),
        "context60": (336, 224, 100, 0.2, -1, 0.45, 0.45, False, _CAR),
        "context59": (336, 224, 100, 0.2, -1, 0.3, 0.3, False, _CAR),
        "coco_object": (336, 224, 50, 0.2, -1, 0.3, 0.3, False, _IN80),
        "coco_stuff": (336, 0, 50, 0.2, -1, 0.1, 0.1, False, _CAR),
        "ade20k": (336, 0, 100, 0.2, -1, 0.3, 0.3, False, _CAR),
        "cityscapes": (560, 0, 100, 0.35, -1, 0.0, 0.0001, False, _IN80),
    },
    "ViT-L/14": {
        "voc21": (336, 0, 50, 0.1, -2, 0.5, 0.4, True, _CAR),
        "voc20": (336, 0, 70, 0.2, -1, 0.1, 0.0001, False, _CAR),
        "context60": (336, 0, 50, 0.2, -2, 0.3, 0.3, False, _IN80),
        "context59": (336, 0, 100, 0.2, -2, 0.45, 0.45, False, _CAR),
        "coco_object": (336, 0, 50, 0.1, -2, 0.5, 0.5, False, _IN80),
        "coco_stuff": (336, 0, 50, 0.2, -2, 0.2, 0.2, False, _IN80),
        "ade20k": (336, 0, 50, 0.2, -1, 0.2, 0.2, False, _IN80),
        "cityscapes": (448, 0, 100, 0.35, -1, 0.0, 0.0001, False, _CAR),
    },
}
CLASS_FILES = {"voc21": "cls_voc21.txt", "voc20": "cls_voc21.txt", "context60": "cls_context60.txt",
               "context59": "cls_context60.txt", "coco_object": "cls_coco81.txt",
               "coco_stuff": "cls_coco_stuff172.txt", "ade20k": "cls_ade20k.txt", "cityscapes": "cls_city.txt"}
# benchmarks whose ground truth (as ovss's datasets load it) has no background class
NO_BACKGROUND = ("voc20", "context59", "coco_stuff", "ade20k", "cityscapes")
# the official code has configs for ViT-B/16 and ViT-L/14; other CLIP models borrow the ViT-B/16 table
CONFIG_FALLBACK = "ViT-B/16"


def config_values(clip_name: str, bench: str) -> dict:
    """The official config values of `bench` for CLIP model `clip_name` (model-dependent columns only)."""
    table = CONFIGS.get(clip_name, CONFIGS[CONFIG_FALLBACK])
    if bench not in table:
        raise InputError(f"CLIPer has no official config for benchmark {bench!r}; available: {', '.join(table)}")
    return dict(zip(_COLS, table[bench]))


@dataclass
class CLIPerParams:
    """Hyper-parameters. Those left at None are filled from the official config of `benchmark` for the CLIP
    model in use (protocols.md §3.7: the table differs between ViT-B/16 and ViT-L/14)."""
    benchmark: str = "voc21"                 # official config supplying the None fields below
    size: Optional[int] = None               # shorter side, both sides rounded to multiples of the patch
    slide_crop: Optional[int] = None         # sliding-window crop (pixels), 0 = whole image only
    slide_stride: int = 112
    logit_scale: Optional[float] = None
    attention_thr: Optional[float] = None    # ELF selected-layer threshold and SD attention threshold
    select_layer: Optional[int] = None       # -1 or -2
    score_threshold: Optional[float] = None  # cam_to_label: classes with image score above this are valid
    bkg_thre: Optional[float] = None         # cam_to_label: background threshold (0 = squared-residual rule)
    is_normalize: Optional[bool] = None      # cam_to_label: per-class min-max normalisation
    templates: Optional[str] = None          # cliper_car (15) | imagenet (80) | a file
    split_halves: Optional[bool] = None      # Cityscapes: the image is processed as two square halves
    seed: Optional[int] = 0                  # diffusion noise: torch.manual_seed(seed) before drawing; None = unseeded
    time_step: int = 45                      # of `num_steps` PNDM steps (t = 101)
    num_steps: int = 50
    sd_layers: tuple = ("up_blocks.3.attentions.1.transformer_blocks.0.attn1",
                        "up_blocks.3.attentions.0.transformer_blocks.0.attn1")
    window_batch: int = 4                    # windows per forward pass
    class_format: str = "ovss"
    classes_file: Optional[str] = None


def _presets() -> dict:
    out = {}
    for bench, fname in CLASS_FILES.items():
        out[bench] = dict(benchmark=bench, class_format="cliper",
                          classes_file=resource_path("classnames", "official", "cliper", fname))
    return out


# ----------------------------------------------------------------------------------------------------------
# pre-processing
# ----------------------------------------------------------------------------------------------------------
def cliper_resize(rgb: np.ndarray, size: int, patch: int) -> torch.Tensor:
    """CLIPer's own transform: shorter side -> size, each side rounded to the nearest multiple of the patch
    (int(x/p + 0.5)·p), PIL bicubic, ToTensor, CLIP mean/std -> (1, 3, h_px, w_px) float32."""
    H, W = rgb.shape[:2]
    ratio = size / min(W, H)
    h = int(H * ratio / patch + 0.5) * patch
    w = int(W * ratio / patch + 0.5) * patch
    if h < patch or w < patch:
        raise InputError(f"image {W}x{H} is too elongated for CLIPer's resize (one side rounds to 0 patches)")
    im = Image.fromarray(rgb).resize((w, h), Image.BICUBIC)
    return clip_to_tensor(np.asarray(im))


# ----------------------------------------------------------------------------------------------------------
# early-layer fusion (steps 1-4)
# ----------------------------------------------------------------------------------------------------------
def sinkhorn_step_(S: torch.Tensor) -> torch.Tensor:
    """In place: every column divided by its sum (over queries), then every row by its sum."""
    S /= S.sum(dim=-2, keepdim=True)
    S /= S.sum(dim=-1, keepdim=True)
    return S


def fuse_post(S: torch.Tensor) -> torch.Tensor:
    """post(X): symmetrise (X + Xᵀ)/2, subtract the column mean (over queries), clamp at 0, rows normalised to
    sum 1. The halving is left out: scaling by 2 is exact in floating point and cancels in the row
    normalisation, so the result is bit-identical with one pass less."""
    Y = S + S.transpose(-2, -1)
    Y -= Y.mean(dim=-2, keepdim=True)
    Y.clamp_(min=0)
    Y /= Y.sum(dim=-1, keepdim=True)
    return Y


def elf_forward(clip, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Normalised images (B, 3, H, W) -> per-layer joint-space features Z (L, B, 1+N, E) from the fused last
    block, the head-mean final attention B_fin (B, 1+N, 1+N), and the grid (h, w)."""
    t, h, w = clip.embed(x, pe="B")
    L = len(clip.blocks)
    embeds, S = [], None
    for i in range(L - 1):
        blk = clip.blocks[i]
        u = blk.ln_1(t)
        embeds.append(u)
        q, k, v = clip.qkv(i, u, normed=True)
        A = attention_probs(q, k)                          # (B, heads, T, T), per head
        S = A.float().clone() if S is None else S.add_(A)  # per-head sum over blocks 0..L-2
        t = clip.residual_mlp(i, t, clip.attn_out(i, A @ v))
    embeds.append(t)                                       # the raw input of the last block
    last = clip.blocks[L - 1]
    E = torch.stack(embeds)                                # (L, B, T, D)
    D = E.shape[-1]
    nh = clip.info.heads
    U = last.ln_1(E)
    V = F.linear(U, last.attn.in_proj_weight[2 * D:], last.attn.in_proj_bias[2 * D:])
    V = V.unflatten(-1, (nh, D // nh)).transpose(-3, -2)   # (L, B, heads, T, d)
    outs = []
    for k in range(L):                                     # the Sinkhorn steps accumulate over the calls
        Bk = fuse_post(sinkhorn_step_(S))
        outs.append(Bk.to(V.dtype) @ V[k])
    O = torch.stack(outs).flatten(0, 1)                    # (L*B, heads, T, d)
    Z = clip.head(clip.attn_out(L - 1, O))                 # (L*B, T, E)
    return Z.unflatten(0, (L, x.shape[0])), Bk.mean(dim=1), h, w


def class_logits(Z: torch.Tensor, text: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """Z (..., T, E) -> λ·cos logits of the patch tokens (..., |text|, N): (λ·ẑ)·t̂ᵀ as the official code."""
    z = Z[..., 1:, :].float()
    z = z / z.norm(dim=-1, keepdim=True)
    t = text / text.norm(dim=-1, keepdim=True)
    return ((logit_scale * z) @ t.T).transpose(-1, -2)


def fg_probs(logits: torch.Tensor, fg_index: list[list[int]]) -> torch.Tensor:
    """Softmax over all texts (dim -2 of (..., |T|, N)), then per class the max over its foreground queries."""
    p = logits.softmax(dim=-2)
    if all(len(ix) == 1 for ix in fg_index):
        return p[..., [ix[0] for ix in fg_index], :]
    return torch.stack([p[..., ix, :].amax(dim=-2) for ix in fg_index], dim=-2)


# ----------------------------------------------------------------------------------------------------------
# FGC (steps 16-18) and the label rule (step 21)
# ----------------------------------------------------------------------------------------------------------
def normalize_sd_attention_(M: torch.Tensor, thr: float) -> torch.Tensor:
    """In place on (..., Q, K): columns divided by their max over rows (+1e-5), entries < thr set to 0, rows
    divided by their sum (+1e-5)."""
    M /= M.amax(dim=-2, keepdim=True) + 1e-5
    M.masked_fill_(M < thr, 0)
    M /= M.sum(dim=-1, keepdim=True) + 1e-5
    return M


def window_cells(boxes: torch.Tensor, w: int, patch: int) -> torch.Tensor:
    """Pixel windows (n_win, 4: y1, x1, y2, x2), aligned to the patch grid -> flat indices (n_win, n) of the grid
    cells (grid width `w`) each window covers, row-major within the window."""
    hw = int(boxes[0, 2] - boxes[0, 0]) // patch
    ww = int(boxes[0, 3] - boxes[0, 1]) // patch
    r = (boxes[:, 0:1] // patch + torch.arange(hw))[:, :, None]
    c = (boxes[:, 1:2] // patch + torch.arange(ww))[:, None, :]
    return (r * w + c).flatten(1)


class ChainApplier:
    """Applies A_f = M_1·M_2·…·M_n to X right to left, M_n first: consumes the maps of layer i (heads in order
    within the layer) whenever they arrive, buffering a layer only until every later one has been applied."""

    def __init__(self, X: torch.Tensor, n_layers: int, thr: float):
        self.Y = X
        self.next = n_layers - 1
        self.thr = thr
        self.pending: dict[int, torch.Tensor] = {}

    def __call__(self, i: int, maps: torch.Tensor) -> None:
        self.pending[i] = maps
        while self.next >= 0 and self.next in self.pending:
            P = self.pending.pop(self.next)
            for j in reversed(range(P.shape[0])):
                M = normalize_sd_attention_(P[j], self.thr)
                self.Y = M @ self.Y.to(M.dtype)
            self.next -= 1

    @property
    def done(self) -> bool:
        return self.next < 0


def cam_to_label(maps: torch.Tensor, scores: torch.Tensor, score_threshold: float, bkg_thre: float,
                 is_normalize: bool) -> torch.Tensor:
    """Official label rule on maps (C, H, W) and image scores (C,): 0 = background, c+1 = class c."""
    C = maps.shape[0]
    valid = (scores > score_threshold).to(maps.dtype)[:, None]
    cam = maps.reshape(C, -1).clone()
    if is_normalize:
        cam -= cam.amin(dim=-1, keepdim=True)
        cam /= cam.amax(dim=-1, keepdim=True) + 1e-6
    if bkg_thre > 0:
        cam[cam < bkg_thre] = 0
        v = valid * cam
        val, idx = v.max(dim=0)
        label = idx + 1
        label[val == 0] = 0
    else:
        v = valid * cam
        label = torch.cat([(1 - v.amax(dim=0, keepdim=True)) ** 2, v]).argmax(dim=0)
    return label.view(maps.shape[1:]).long()


# ----------------------------------------------------------------------------------------------------------
# the methods
# ----------------------------------------------------------------------------------------------------------
class CLIPerELF(Method):
    name = "cliper_elf"
    needs = ("clip",)
    paper = ("Sun et al., CLIPer: Hierarchically Improving Spatial Representation of CLIP for Open-Vocabulary "
             "Semantic Segmentation, ICCV 2025 (CLIPer*, early-layer fusion only)")
    repo = "linsun449/cliper.code"
    summary = "early-layer fusion: summed per-head attention of blocks 0..L-2 (Sinkhorn) over all layers' embeddings"
    Params = CLIPerParams
    PRESETS = _presets()
    DEFAULT_PRESET = dict(benchmark="voc21")
    use_sd = False
    logits_are_scores = True    # the output channels are CLIPer's score maps in [0, 1], not logits of a softmax

    def __init__(self, params: CLIPerParams, models: Models, classes: ClassList):
        super().__init__()
        self.clip = models.clip
        self.models = models
        self.params = params
        self._fill_params()
        self.class_list = self._classes(classes)
        self.fg_index, self.text = self._text(self.class_list)

    @property
    def label_offset(self) -> int:
        """Labels are 0 = background, c+1 = foreground class c. On benchmarks whose ground truth has no
        background class (voc20, context59, coco_stuff, ade20k, cityscapes) label l is dataset class l-1;
        elsewhere (voc21, context60, coco_object: background = class 0) label l is dataset class l."""
        return int(self.params.benchmark in NO_BACKGROUND)

    # ---------------------------------------------------------------- setup
    def _fill_params(self) -> None:
        """Fill the None fields from the official config (in place: Segmenter.params shows the values used)."""
        p = self.params
        vals = config_values(self.clip.name, p.benchmark)
        vals["split_halves"] = p.benchmark == "cityscapes"
        for k, v in vals.items():
            if getattr(p, k) is None:
                setattr(p, k, v)
        patch = self.clip.info.patch
        if p.slide_crop and p.slide_crop % patch:
            raise InputError(f"slide_crop={p.slide_crop} must be a multiple of the patch size {patch}")
        if p.slide_stride % patch:
            raise InputError(f"slide_stride={p.slide_stride} must be a multiple of the patch size {patch}")
        if p.select_layer not in range(-len(self.clip.blocks), len(self.clip.blocks)):
            raise InputError(f"select_layer={p.select_layer} is outside the {len(self.clip.blocks)} layers")

    @staticmethod
    def _classes(classes: ClassList) -> ClassList:
        """Class 0 must be the background (its queries: the background words); add an empty one if absent."""
        if classes.names and classes.names[0].strip().lower() == "background":
            return classes
        return dataclasses.replace(classes, names=("background",) + classes.names,
                                   query_to_class=tuple(c + 1 for c in classes.query_to_class))

    def _text(self, classes: ClassList) -> tuple[list[list[int]], torch.Tensor]:
        """Texts [foreground queries; background words; mean of the foreground embeddings] (step 5)."""
        q2c = classes.query_to_class
        emb = encode_queries(self.clip, classes.queries, load_templates(self.params.templates),
                             device=self.models.device).float()
        fg = [i for i, c in enumerate(q2c) if c > 0]
        bg = [i for i, c in enumerate(q2c) if c == 0]
        if not fg:
            raise InputError("CLIPer needs at least one class besides the background")
        fg_emb = emb[fg]
        text = torch.cat([fg_emb, emb[bg], fg_emb.mean(dim=0, keepdim=True)])
        pos = {q: j for j, q in enumerate(fg)}
        fg_index = [[pos[i] for i, c in enumerate(q2c) if c == k] for k in range(1, len(classes.names))]
        return fg_index, text

    # ---------------------------------------------------------------- ELF (steps 1-11)
    def _elf_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """(B, 3, H, W) -> per-layer logits (L, B, |T|, h, w) and head-mean final attention (B, N, N)."""
        Z, B_fin, h, w = elf_forward(self.clip, x.to(self.models.device, self.clip.dtype))
        logits = class_logits(Z, self.text, self.params.logit_scale)
        return logits.unflatten(-1, (h, w)), B_fin[:, 1:, 1:].float(), h, w

    def _slide(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Step 7: windowed logits and attentions averaged on the patch grid, logits propagated by the
        row-normalised attention canvas -> logits (L, |T|, h, w)."""
        p = self.params
        patch = self.clip.info.patch
        H, W = x.shape[-2:]
        boxes = window_boxes(H, W, p.slide_crop, p.slide_stride)
        dev = self.models.device
        N = h * w
        L = len(self.clip.blocks)
        cells = window_cells(boxes, w, patch).to(dev)                # (n_win, n) grid cells of each window
        pairs = cells[:, :, None] * N + cells[:, None, :]            # (n_win, n, n) canvas entries
        preds = torch.zeros(L * self.text.shape[0], N, device=dev)
        attn = torch.zeros(N * N, device=dev)
        for i in range(0, len(boxes), p.window_batch):
            crops = torch.stack([x[0, :, y1:y2, x1:x2] for y1, x1, y2, x2 in boxes[i:i + p.window_batch].tolist()])
            logits, A, _, _ = self._elf_logits(crops)                # (L, b, T, hw, ww), (b, n, n)
            vals = logits.flatten(-2).permute(0, 2, 1, 3)            # (L, T, b, n)
            preds.index_add_(1, cells[i:i + p.window_batch].flatten(), vals.reshape(preds.shape[0], -1))
            attn.index_add_(0, pairs[i:i + p.window_batch].flatten(), A.flatten())
        count = torch.bincount(cells.flatten(), minlength=N).float()
        count_attn = torch.bincount(pairs.flatten(), minlength=N * N).float()
        preds = preds / count
        attn = (attn / (count_attn + 1e-5)).view(N, N)
        attn = attn / attn.sum(dim=-1, keepdim=True)
        return (preds @ attn).view(L, -1, h, w)

    def coarse(self, x: torch.Tensor) -> torch.Tensor:
        """Steps 1-10: the coarse map Seg (C, h, w) of a network input (1, 3, H, W)."""
        p = self.params
        logits, A_fin, h, w = self._elf_logits(x)
        logits = logits[:, 0]                                    # (L, T, h, w)
        seg = fg_probs(logits.flatten(-2), self.fg_index)        # (L, C, N)
        if p.slide_crop and p.slide_crop > 0:
            slide = self._slide(x, h, w)
            seg = 0.5 * fg_probs(slide.flatten(-2), self.fg_index) + 0.5 * seg
        last = seg[p.select_layer]                               # a view: thresholded in place (step 8)
        last[last < last.amax(dim=-1, keepdim=True) * p.attention_thr] = 0
        prop = last @ A_fin[0]                                   # step 9
        return (prop + seg.mean(dim=0)).view(-1, h, w)           # step 10

    # ---------------------------------------------------------------- FGC (steps 12-18)
    def refine(self, image01: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        """Seg (C, h, w) -> Seg_f (C, 64, 64) = (A_f · Seg64ᵀ)ᵀ; identity for CLIPer-ELF."""
        return seg

    # ---------------------------------------------------------------- whole pipeline
    def _one(self, rgb: np.ndarray, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Original RGB (H0, W0, 3) and its network input -> maps (C, H0, W0) and scores (C,) (steps 1-20)."""
        seg = self.coarse(x)
        score = seg.amax(dim=(-1, -2))
        image01 = torch.tensor(rgb).permute(2, 0, 1).float().div(255)
        seg_f = self.refine(image01, seg)
        score = seg_f.amax(dim=(-1, -2)) * 0.5 + score * 0.5
        maps = F.interpolate(seg_f[None].float(), size=rgb.shape[:2], mode="bilinear", align_corners=False)[0]
        maps = maps / (maps.amax(dim=(-1, -2), keepdim=True) + 1e-5) * score[:, None, None]
        return maps, score

    @torch.inference_mode()
    def forward(self, image: LoadedImage) -> Prediction:
        p = self.params
        rgb = image.rgb
        x = cliper_resize(rgb, p.size, self.clip.info.patch)
        H0 = rgb.shape[0]
        if p.split_halves and rgb.shape[1] > H0:
            # Cityscapes: right half = columns [H, W), left half = [0, H); the network input is resized as a
            # whole and split at its own height
            ih = x.shape[-2]
            parts = [self._one(rgb[:, :H0], x[..., :ih]), self._one(rgb[:, H0:], x[..., ih:])]
            labels = torch.cat([cam_to_label(m, s, p.score_threshold, p.bkg_thre, p.is_normalize)
                                for m, s in parts], dim=1)
            maps = torch.cat([m for m, _ in parts], dim=2)
            valid = [(s > p.score_threshold).float()[:, None, None] * m for m, s in parts]
            bg = torch.cat([(1 - v.amax(dim=0, keepdim=True)) ** 2 for v in valid], dim=2)
            scores = torch.stack([s for _, s in parts])
        else:
            maps, scores = self._one(rgb, x)
            labels = cam_to_label(maps, scores, p.score_threshold, p.bkg_thre, p.is_normalize)
            valid = (scores > p.score_threshold).float()[:, None, None] * maps
            bg = (1 - valid.amax(dim=0, keepdim=True)) ** 2
        logits = torch.cat([bg, maps]).float().cpu()
        return Prediction(logits=logits, labels=labels.cpu(), extras={"scores": scores.float().cpu()})


class CLIPer(CLIPerELF):
    name = "cliper"
    needs = ("clip", "sd")
    paper = ("Sun et al., CLIPer: Hierarchically Improving Spatial Representation of CLIP for Open-Vocabulary "
             "Semantic Segmentation, ICCV 2025")
    summary = ("early-layer fusion + fine-grained compensation by the chained self-attention heads of "
               "Stable Diffusion 2.1-base")
    use_sd = True

    def __init__(self, params: CLIPerParams, models: Models, classes: ClassList):
        super().__init__(params, models, classes)
        self.sd = models.sd

    def refine(self, image01: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        p = self.params
        seg64 = F.interpolate(seg[None].float(), size=(64, 64), mode="bilinear", align_corners=False)[0]
        chain = ChainApplier(seg64.flatten(-2).T, len(p.sd_layers), p.attention_thr)
        self.sd.self_attention(image01, seed=p.seed, layers=tuple(p.sd_layers), time_step=p.time_step,
                               num_steps=p.num_steps, consume=chain)
        assert chain.done
        return chain.Y.T.reshape(-1, 64, 64).float()


METHODS = {"cliper": CLIPer, "cliper_elf": CLIPerELF}
