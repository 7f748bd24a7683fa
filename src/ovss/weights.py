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
    hf_allow: Optional[Sequence[str]] = None   # folder models: only these files of the repo (not its extra checkpoints)


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
    WeightSpec("clip:MetaCLIP-B/16", "MetaCLIP ViT-B/16 (fullcc 2.5B, QuickGELU; CorrCLIP's CLIP)", "clip_weights",
               "b16_fullcc2.5b.pt", hf_repo="timm/vit_base_patch16_clip_224.metaclip_2pt5b",
               hf_files=("open_clip_model.safetensors", "open_clip_pytorch_model.bin"), size_mb=599,
               aliases=("metaclip_fullcc", "clip:metaclip_fullcc")),
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
    WeightSpec("sam:vit_l", "Segment Anything ViT-L", "sam_weights", "sam_vit_l_0b3195.pth",
               url=f"{_FB}/segment_anything/sam_vit_l_0b3195.pth", size_mb=1250),
    WeightSpec("sam:vit_h", "Segment Anything ViT-H", "sam_weights", "sam_vit_h_4b8939.pth",
               url=f"{_FB}/segment_anything/sam_vit_h_4b8939.pth", size_mb=2450),
    WeightSpec("sam2:hiera_l", "SAM 2 Hiera-L (CorrCLIP's mask generator)", "mask_generator_weights",
               "sam2_hiera_large.pt", url=f"{_FB}/segment_anything_2/072824/sam2_hiera_large.pt", size_mb=898,
               aliases=("sam2", "sam2_hiera_large")),
    WeightSpec("sd21_base", "Stable Diffusion 2.1-base (diffusers folder)", "sd_weights",
               "stable-diffusion-2-1-base/", hf_repo="stabilityai/stable-diffusion-2-1-base", size_mb=5200,
               hf_allow=("model_index.json", "scheduler/*", "tokenizer/*", "text_encoder/config.json",
                         "text_encoder/model.safetensors", "unet/config.json",
                         "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
                         "vae/diffusion_pytorch_model.safetensors")),
]}
_ALIASES = {a: s.key for s in SPECS.values() for a in s.aliases}


class MissingWeightsError(WeightsError):
    """Weights are not cached and cannot be downloaded (offline)."""


def spec(key: str) -> WeightSpec:
    key = _ALIASES.get(key, key)
    if key not in SPECS:
        raise WeightsError(f"unknown model {key!r}; known: {', '.join(SPECS)}")
    return SPECS[key]


def offline() -> bool:
    """True when downloads are switched off (``OVSS_OFFLINE`` or ``HF_HUB_OFFLINE`` set to 1/true/yes): missing
    weights then fail at once with the fix in the message, instead of waiting for network time-outs."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("OVSS_OFFLINE", "HF_HUB_OFFLINE"))


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
            return snapshot_download(s.hf_repo, local_files_only=True, allow_patterns=s.hf_allow)
        except Exception:
            return None
    for f in s.hf_files:
        p = try_to_load_from_cache(s.hf_repo, f)
        if isinstance(p, str):
            return p
    return None


def source(s: WeightSpec) -> str:
    """Where `s` is downloaded from: ``hf://owner/repo[/file]`` on the Hugging Face hub, or the official URL."""
    if s.url:
        return s.url
    return f"hf://{s.hf_repo}" + (f"/{s.hf_files[0]}" if s.hf_files else "")


def download_target(s: WeightSpec) -> str:
    """Where a download of `s` lands: a file under :func:`cache_dir` (URL) or the Hugging Face hub cache."""
    if s.url:
        return _url_target(s)
    from huggingface_hub import constants
    return os.path.join(constants.HF_HUB_CACHE, "models--" + s.hf_repo.replace("/", "--"))


def missing_message(s: WeightSpec, reason: str = "") -> str:
    """What to tell a user whose weights are missing: the exact `ovss weights download` command first."""
    where = f"https://huggingface.co/{s.hf_repo}" if s.hf_repo else s.url
    why = f" ({reason})" if reason else ""
    flag = "--" + s.arg.replace("_", "-")
    what = (f"{s.hf_files[0]} (or the official {s.filename})" if s.hf_files else s.filename)
    return (f"weights for {s.description} [{s.key}] are not on this machine and could not be downloaded{why}.\n"
            f"  fix: run `ovss weights download {s.key}` where there is internet access (it lands in "
            f"{download_target(s)}; copy that to this machine if needed),\n"
            f"       or fetch {what} from {where} yourself and pass {s.arg}=/path/to/{s.filename.rstrip('/')} "
            f"(command line: {flag} PATH); {s.arg}='random' gives random weights for testing")


@dataclass(frozen=True)
class WeightStatus:
    """What this machine holds of one model (never touches the network)."""
    spec: WeightSpec
    path: Optional[str]        # the cached file/folder, or None
    size: int                  # bytes on disk of `path` (0 when missing)
    partial: int = 0           # bytes of an interrupted URL download (resumed by the next download)

    @property
    def state(self) -> str:
        return "cached" if self.path else ("partial" if self.partial else "missing")


def disk_size(path: str) -> int:
    """Bytes of a file, or of every file under a folder (links followed: the hub cache links to blobs)."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:   # a dangling link
                pass
    return total


def status(key: str) -> WeightStatus:
    s = spec(key)
    path = local_path(s.key)
    part = _url_target(s) + ".part" if s.url else ""
    partial = os.path.getsize(part) if part and os.path.exists(part) else 0
    return WeightStatus(s, path, disk_size(path) if path else 0, partial)


def list_status() -> list[WeightStatus]:
    """The status of every model in :data:`SPECS`, in registry order."""
    return [status(k) for k in SPECS]


def keys_for_method(method: str, clip: Optional[str] = None, sam: str = "vit_b",
                    mask_generator: Optional[str] = None) -> list[str]:
    """The registry keys a method loads with its default settings (and the proxy models of its presets).
    `clip` None = the method's default CLIP (its ``default_clip``, else ViT-B/16); a method with a
    ``mask_generator`` parameter (CorrCLIP) also lists that generator's weights — of `mask_generator` when given
    (e.g. "sam2", the official one), else of the method's default ("auto": what this machine would use)."""
    from .methods import get_method
    cls = get_method(method)
    keys: list[str] = []
    if "clip" in cls.needs:
        from .backbones.clip import ALIASES as CLIP_ALIASES
        from .backbones.clip import DEFAULT_CLIP
        clip = clip or getattr(cls, "default_clip", None) or DEFAULT_CLIP
        name = CLIP_ALIASES.get(clip, clip)
        if f"clip:{name}" not in SPECS:
            raise WeightsError(f"unknown CLIP model {clip!r}; known: "
                               f"{', '.join(k[5:] for k in SPECS if k.startswith('clip:'))}")
        keys.append(f"clip:{name}")
    if "vfm" in cls.needs:
        names = [getattr(cls.resolve_params(None, {}), "vfm", None)]
        names += [p.get("vfm") for p in cls.PRESETS.values()]
        keys += [_ALIASES.get(n, n) for n in dict.fromkeys(n for n in names if n)]
    if "sam" in cls.needs:
        keys.append(f"sam:{sam}")
    if "sd" in cls.needs:
        keys.append("sd21_base")
    kind = getattr(cls.resolve_params(None, {}), "mask_generator", None)
    if kind and mask_generator:
        kind = mask_generator
    if kind:
        from .backbones.mask_generator import weights_key
        keys.append(weights_key(kind))
    return list(dict.fromkeys(keys))


def download(key: str, progress: bool = True) -> str:
    """Fetch `key` into the cache (no-op when present) and return its local path."""
    s = spec(key)
    hit = local_path(s.key)
    if hit:
        return hit
    if offline():
        raise MissingWeightsError(missing_message(s, "offline mode: OVSS_OFFLINE or HF_HUB_OFFLINE is set"))
    if s.url:
        host = s.url
    else:
        from huggingface_hub import constants
        host = constants.ENDPOINT
    no_net = _unreachable(host)
    if no_net:   # fail now rather than after the hub client's retries (about 25 s per file)
        raise MissingWeightsError(missing_message(s, no_net))
    try:
        if s.url:
            return _download_url(s.url, _url_target(s), progress)
        if not s.hf_files:
            from huggingface_hub import snapshot_download
            return snapshot_download(s.hf_repo, allow_patterns=s.hf_allow)
        from huggingface_hub import hf_hub_download
        last: Exception | None = None
        from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError
        for f in s.hf_files:
            try:
                return hf_hub_download(s.hf_repo, f)
            except LocalEntryNotFoundError:   # no connection: the next candidate would fail the same way
                raise
            except EntryNotFoundError as e:   # not in this repo: try the next candidate file name
                last = e
        raise last  # type: ignore[misc]
    except MissingWeightsError:
        raise
    except Exception as e:
        raise MissingWeightsError(missing_message(s, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")) from None


def _unreachable(url: str) -> Optional[str]:
    """A reason when the host of `url` cannot even be resolved (no network), else None. Skipped behind a proxy,
    where the proxy resolves names."""
    import socket
    from urllib.parse import urlparse
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                                       "all_proxy")):
        return None
    host = urlparse(url).hostname
    if not host:
        return None
    try:
        socket.getaddrinfo(host, 443)
    except OSError as e:
        return f"no network: cannot resolve {host}: {e.strerror or e}"
    return None


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
