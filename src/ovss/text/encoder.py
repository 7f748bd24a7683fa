"""Text embeddings of query strings with the prompt ensemble (spec §1.5), cached in memory and on disk.

For every query q: encode `t.format(q)` for each template t, L2-normalise each, average, L2-normalise. The cache
is keyed by the CLIP model and weights identity, the template list and the query string, so a second run with
the same classes does no text encoding at all, and a new class list encodes only its new names.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Optional, Sequence

import torch

from ..weights import cache_dir

_MEMORY: dict[str, dict[str, torch.Tensor]] = {}
PROMPT_BATCH = 512


def _cache_key(clip, templates: Sequence[str]) -> str:
    h = hashlib.sha256()
    h.update(clip.name.encode())
    h.update(b"\0")
    h.update(clip.weights_id.encode())
    for t in templates:
        h.update(b"\0" + t.encode())
    return h.hexdigest()[:24]


def _disk_path(key: str) -> str:
    return os.path.join(cache_dir(), "text", f"{key}.pt")


def _disk_enabled() -> bool:
    return os.environ.get("OVSS_TEXT_CACHE", "1") not in ("0", "false", "no")


def _load_disk(key: str) -> dict[str, torch.Tensor]:
    path = _disk_path(key)
    if not os.path.exists(path):
        return {}
    try:
        return dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception:   # a corrupt cache file is rebuilt, never fatal
        return {}


def _save_disk(key: str, table: dict[str, torch.Tensor]) -> None:
    path = _disk_path(key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    os.close(fd)
    try:
        torch.save(table, tmp)
        os.replace(tmp, path)      # atomic: readers see the old or the new file, never half of one
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@torch.no_grad()
def _encode_new(clip, queries: list[str], templates: Sequence[str]) -> dict[str, torch.Tensor]:
    prompts = [t.format(q) for q in queries for t in templates]
    tokens = clip.tokenize(prompts)
    lengths = tokens.argmax(dim=-1)
    order = torch.argsort(lengths)              # similar lengths share a batch: shorter cuts
    feats = torch.empty(len(prompts), clip.info.embed_dim, dtype=torch.float32)
    for i in range(0, len(prompts), PROMPT_BATCH):
        idx = order[i:i + PROMPT_BATCH]
        f = clip.encode_text(tokens[idx]).float().cpu()
        feats[idx] = f / f.norm(dim=-1, keepdim=True)
    feats = feats.view(len(queries), len(templates), -1).mean(dim=1)
    feats = feats / feats.norm(dim=-1, keepdim=True)
    return {q: feats[i].clone() for i, q in enumerate(queries)}


def encode_queries(clip, queries: Sequence[str], templates: Sequence[str], use_cache: bool = True,
                   device: Optional[torch.device] = None) -> torch.Tensor:
    """(Q, E) float32, rows L2-normalised, in the order of `queries`."""
    key = _cache_key(clip, templates)
    table = _MEMORY.setdefault(key, {}) if use_cache else {}
    missing = [q for q in dict.fromkeys(queries) if q not in table]
    if missing and use_cache and _disk_enabled():
        disk = _load_disk(key)
        table.update({q: disk[q] for q in missing if q in disk})
        missing = [q for q in missing if q not in table]
    if missing:
        table.update(_encode_new(clip, missing, templates))
        if use_cache and _disk_enabled():
            disk = _load_disk(key)
            disk.update(table)
            _save_disk(key, disk)
    out = torch.stack([table[q] for q in queries])
    return out.to(device) if device is not None else out


def clear_memory_cache() -> None:
    _MEMORY.clear()
