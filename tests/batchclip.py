"""The 'tiny-test' CLIP re-split into 2 attention heads of width 48 (same weights), for the tests of batched inference.

Batching windows of several images is exact only if the backbone's result for a window does not depend on the other
windows of its batch. The 3-head 'tiny-test' CLIP breaks that on CPU: for an odd head count PyTorch's
nn.MultiheadAttention takes its slow path, whose input projection runs on the (tokens, batch, width) transpose and
rounds differently with the batch size (logits differ by ~1e-6). With an even head count the fused path is used,
which (like this model's other kernels) is batch-invariant on CPU, so sequential and batched runs must agree to the
bit, and any difference is the batching code's fault.

`install()` puts it in ovss.api's model cache under the 'tiny-test' key (so ``Segmenter(clip="tiny-test",
clip_weights="random")`` and ``ovss eval --clip tiny-test`` load it); `make` is an ``ovss eval --factory`` for
subprocesses (torchrun). The text tower is the tiny-test one, so its text-embedding cache entries are shared.
"""
from __future__ import annotations

import logging

import torch

KEY = ("clip", "tiny-test", "random", "cpu", torch.float32)   # ovss.api's cache key of the tiny-test CLIP
_MODEL = None


def clip():
    """The tiny-test CLIP (its weights) with 2 heads of width 48 instead of 3 of 32 (built once)."""
    global _MODEL
    if _MODEL is None:
        import open_clip

        from ovss.backbones.clip import ClipBackbone, load_clip
        tiny = load_clip("tiny-test", "random", torch.device("cpu"), torch.float32)
        quiet = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)
        try:
            model = open_clip.CLIP(embed_dim=64, quick_gelu=True,
                                   vision_cfg=dict(image_size=224, layers=3, width=96, head_width=48, patch_size=16),
                                   text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2))
        finally:
            logging.getLogger().setLevel(quiet)
        model.load_state_dict(tiny.model.state_dict(), strict=True)
        _MODEL = ClipBackbone(model, tiny.name, tiny.weights_id)
        assert _MODEL.info.heads == 2
    return _MODEL


def install() -> None:
    from ovss import api
    api._MODEL_CACHE[KEY] = clip()


def make(cfg, device=None):
    """``ovss eval --factory batchclip:make``: the real ovss.Segmenter, on the 2-head tiny CLIP."""
    from ovss.eval.runner import default_factory
    install()
    return default_factory(cfg, device)
