"""One resolver for every model's weights.

`resolve(key, weights)` turns the user's ``*_weights=`` argument into something a backbone can load:

* ``"random"``      -> :data:`RANDOM` (the backbone builds its architecture with deterministic random init);
* a path            -> that file or folder (it must exist);
* ``None``          -> the cached download from the Hugging Face hub (or the official URL), fetched on
  first use; offline and not cached -> :class:`MissingWeightsError`, whose message names the file and the
  command that fetches it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

from .errors import WeightsError

RANDOM = "random"
PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class WeightSpec:
    """Where the weights of one model come from."""
    key: str                        # the name users pass to `ovss weights ...`
    description: str
    arg: str                        # the Segmenter argument that takes a local file instead
    filename: str                   # the official file name (what a user downloads by hand)
    hf_repo: Optional[str] = None   # Hugging Face hub repository
    hf_files: Sequence[str] = ()    # candidate files in the repo (first found wins); empty = whole repo (folder)
    url: Optional[str] = None       # the official download URL (used when there is no hub copy)
    size_mb: int = 0                # approximate download size
    aliases: Sequence[str] = field(default_factory=tuple)


_FB = "https://dl.fbaipublicfiles.com"
SPECS: dict[str, WeightSpec] = {s.key: s for s in [
    WeightSpec("clip:ViT-B/16", "CLIP ViT-B/16 (OpenAI)", "clip_weights", "ViT-B-16.pt",
               hf_repo="timm/vit_base_patch16_clip_224.openai",
               hf_files=("open_clip_model.safetensors", "open_clip_pytorch_model.bin"), size_mb=599),
    WeightSpec("clip:ViT-L/14", "CLIP ViT-L/14 (OpenAI)", "clip_weights", "ViT-L-14.pt",
               hf_repo="timm/vit_large_patch14_clip_224.openai",
               hf_files=("open_clip_model.safetensors", "open_clip_pytorch_model.bin"), size_mb=1710),
    WeightSpec("clip:ViT-H/14", "OpenCLIP ViT-H/14 (laion2b_s32b_b79k)", "clip_weights",
               "open_clip_pytorch_model.bin", hf_repo="laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
               hf_files=("open_clip_model.safetensors", "open_clip_pytorch_model.bin"), size_mb=3940),
    WeightSpec("dino_vits8", "DINO ViT-S/8", "vfm_weights", "dino_deitsmall8_pretrain.pth",
               url=f"{_FB}/dino/dino_deitsmall8_pretrain/dino_deitsmall8_pretrain.pth", size_mb=83),
    WeightSpec("dino_vits16", "DINO ViT-S/16", "vfm_weights", "dino_deitsmall16_pretrain.pth",
               url=f"{_FB}/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth", size_mb=83),
    WeightSpec("dino_vitb8", "DINO ViT-B/8", "vfm_weights", "dino_vitbase8_pretrain.pth",
               url=f"{_FB}/dino/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth", size_mb=327),
    WeightSpec("dino_vitb16", "DINO ViT-B/16", "vfm_weights", "dino_vitbase16_pretrain.pth",
               url=f"{_FB}/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth", size_mb=327),
    WeightSpec("dinov2_vitb14", "DINOv2 ViT-B/14 with registers", "vfm_weights", "dinov2_vitb14_reg4_pretrain.pth",
               url=f"{_FB}/dinov2/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth", size_mb=330),
    WeightSpec("mae_vitb16", "MAE ViT-B/16 (pre-trained encoder)", "vfm_weights", "mae_pretrain_vit_base.pth",
               url=f"{_FB}/mae/pretrain/mae_pretrain_vit_base.pth", size_mb=327),
    WeightSpec("sam:vit_b", "Segment Anything ViT-B", "sam_weights", "sam_vit_b_01ec64.pth",
               url=f"{_FB}/segment_anything/sam_vit_b_01ec64.pth", size_mb=358, aliases=("sam_vitb",)),
    WeightSpec("sam:vit_h", "Segment Anything ViT-H", "sam_weights", "sam_vit_h_4b8939.pth",
               url=f"{_FB}/segment_anything/sam_vit_h_4b8939.pth", size_mb=2450),
    WeightSpec("sd21_base", "Stable Diffusion 2.1-base (diffusers folder)", "sd_weights",
               "stable-diffusion-2-1-base/", hf_repo="stabilityai/stable-diffusion-2-1-base", size_mb=5200),
]}
_ALIASES = {a: s.key for s in SPECS.values() for a in s.aliases}


class MissingWeightsError(WeightsError):
    """Weights are not cached and cannot be downloaded (offline)."""


def spec(key: str) -> WeightSpec:
    key = _ALIASES.get(key, key)
    if key not in SPECS:
        raise WeightsError(f"unknown model {key!r}; known: {', '.join(SPECS)}")
    return SPECS[key]


def cache_dir() -> str:
    """Folder for URL downloads (hub downloads live in the Hugging Face cache)."""
    return os.environ.get("OVSS_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "ovss"))


def _url_target(s: WeightSpec) -> str:
    return os.path.join(cache_dir(), "weights", s.filename)


def local_path(key: str) -> Optional[str]:
    """The cached copy of `key`, or None; never touches the network."""
    s = spec(key)
    if s.url:
        p = _url_target(s)
        return p if os.path.exists(p) else None
    from huggingface_hub import try_to_load_from_cache
    if not s.hf_files:
        from huggingface_hub import snapshot_download
        try:
            return snapshot_download(s.hf_repo, local_files_only=True)
        except Exception:
            return None
    for f in s.hf_files:
        p = try_to_load_from_cache(s.hf_repo, f)
        if isinstance(p, str):
            return p
    return None


def missing_message(s: WeightSpec, reason: str = "") -> str:
    where = f"https://huggingface.co/{s.hf_repo}" if s.hf_repo else s.url
    why = f" ({reason})" if reason else ""
    return (f"weights for {s.description} [{s.key}] are not on this machine and could not be downloaded{why}.\n"
            f"  expected file: {s.filename}  from {where}\n"
            f"  fix: run `ovss weights download {s.key}` on a machine with internet access (the file lands in the "
            f"cache), or pass {s.arg}=/path/to/{s.filename.rstrip('/')}; "
            f"{s.arg}='random' gives random weights for testing")


def download(key: str, progress: bool = True) -> str:
    """Fetch `key` into the cache (no-op when present) and return its local path."""
    s = spec(key)
    hit = local_path(s.key)
    if hit:
        return hit
    try:
        if s.url:
            return _download_url(s.url, _url_target(s), progress)
        if not s.hf_files:
            from huggingface_hub import snapshot_download
            return snapshot_download(s.hf_repo)
        from huggingface_hub import hf_hub_download
        last: Exception | None = None
        for f in s.hf_files:
            try:
                return hf_hub_download(s.hf_repo, f)
            except Exception as e:  # try the next candidate file name
                last = e
        raise last  # type: ignore[misc]
    except MissingWeightsError:
        raise
    except Exception as e:
        raise MissingWeightsError(missing_message(s, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")) from None


def _download_url(url: str, target: str, progress: bool) -> str:
    """Resumable download: bytes go to `target.part` (continued with an HTTP range request) and are
    renamed into place only when complete."""
    import urllib.request

    from tqdm.auto import tqdm

    os.makedirs(os.path.dirname(target), exist_ok=True)
    part = target + ".part"
    have = os.path.getsize(part) if os.path.exists(part) else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(req, timeout=30) as r:
        if have and r.status != 206:  # server ignored the range: start over
            have = 0
        total = int(r.headers.get("Content-Length") or 0) + have
        with open(part, "ab" if have else "wb") as f, tqdm(total=total or None, initial=have, unit="B",
                                                             unit_scale=True, disable=not progress,
                                                             desc=os.path.basename(target)) as bar:
            while chunk := r.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))
    os.replace(part, target)
    return target


def resolve(key: str, weights: Optional[PathLike]) -> str:
    """The user's `*_weights` argument -> ``RANDOM`` or an existing local path (downloading when None)."""
    if weights is None:
        return download(key)
    if isinstance(weights, str) and weights == RANDOM:
        return RANDOM
    p = os.fspath(weights)
    if not os.path.exists(p):
        s = spec(key)
        raise WeightsError(f"{s.arg}={p!r}: no such file or folder (expected {s.description}, e.g. {s.filename}); "
                           f"use {s.arg}=None to download, or `ovss weights download {s.key}`")
    return p


def identity(path_or_random: str, seed: int = 0) -> str:
    """A short string that changes when the weights change (for caches): path + size + mtime."""
    if path_or_random == RANDOM:
        return f"random:{seed}"
    st = os.stat(path_or_random)
    return f"{os.path.abspath(path_or_random)}:{st.st_size}:{int(st.st_mtime)}"
