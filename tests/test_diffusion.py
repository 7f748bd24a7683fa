"""Stable Diffusion attention recording (ovss.backbones.diffusion) on tiny random weights."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ovss.backbones import diffusion as D
from ovss.errors import WeightsError


@pytest.fixture(scope="module")
def sd():
    return D.load_sd(D.RANDOM_TINY, "cpu")


@pytest.fixture(scope="module")
def image():
    return torch.rand(3, 37, 53, generator=torch.Generator().manual_seed(3))


def test_timestep_and_noise_schedule(sd):
    t = sd.timestep(45, 50)
    assert int(t) == 101
    z0 = torch.randn(1, 4, 64, 64)
    zt = sd.noisy_latents(z0, t, seed=7)
    torch.manual_seed(7)
    eps = torch.randn(1, 4, 64, 64)
    abar = float(sd.scheduler.alphas_cumprod[101])
    assert abs(abar - 0.89298) < 1e-4
    torch.testing.assert_close(zt, math.sqrt(abar) * z0 + math.sqrt(1 - abar) * eps, rtol=1e-5, atol=1e-5)


def test_latents_match_diffusers_preprocess(sd, image):
    """Nearest (floor) resize to 512x512 and 2x-1, as VaeImageProcessor.preprocess on a tensor."""
    from diffusers.image_processor import VaeImageProcessor
    ref = VaeImageProcessor().preprocess(image[None], height=512, width=512)
    x = F.interpolate(image[None], size=(512, 512), mode="nearest") * 2 - 1
    torch.testing.assert_close(x, ref, rtol=0, atol=0)
    with torch.inference_mode():
        z = sd.latents(image)
        want = sd.vae.encode(ref).latent_dist.mean * sd.vae.config.scaling_factor
    assert z.shape == (1, 4, 64, 64)
    torch.testing.assert_close(z, want, rtol=0, atol=0)


def test_empty_prompt_ids_and_cache(sd):
    ids = sd.tokenizer("")
    assert ids.shape == (1, 77)
    assert ids[0, :2].tolist() == [49406, 49407] and int(ids[0, 2:].abs().sum()) == 0
    with torch.inference_mode():
        a = sd.prompt_embedding("")
        b = sd.prompt_embedding("")
    assert a is b and a.shape == (1, 77, 32)


def _reference_maps(sd, image, seed, layers):
    """Independent reference: the whole UNet runs with diffusers' classic AttnProcessor everywhere and a
    forward hook stores get_attention_scores of the requested layers."""
    from diffusers.models.attention_processor import AttnProcessor
    mods = dict(sd.unet.named_modules())
    store = {}

    class Rec(AttnProcessor):
        def __init__(self, name):
            self.name = name

        def __call__(self, attn, hidden_states, *a, **k):
            q = attn.head_to_batch_dim(attn.to_q(hidden_states))
            kk = attn.head_to_batch_dim(attn.to_k(hidden_states))
            store[self.name] = attn.get_attention_scores(q, kk, None)
            return super().__call__(attn, hidden_states, *a, **k)

    saved = {n: mods[n].processor for n in layers}
    try:
        for n in layers:
            mods[n].set_processor(Rec(n))
        with torch.inference_mode():
            z0 = sd.latents(image)
            t = sd.timestep()
            zt = sd.noisy_latents(z0, t, seed)
            sd.unet(zt, t, encoder_hidden_states=sd.prompt_embedding(""), return_dict=False)
    finally:
        for n, p in saved.items():
            mods[n].set_processor(p)
    return [store[n] for n in layers]


def test_recorded_maps_equal_full_unet_reference(sd, image):
    maps = sd.self_attention(image, seed=1234)
    assert [tuple(m.shape) for m in maps] == [(5, 4096, 4096)] * 2
    assert maps[0].dtype == torch.float32
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(5, 4096), rtol=0, atol=1e-5)
    ref = _reference_maps(sd, image, 1234, D.CLIPER_LAYERS)
    for m, r in zip(maps, ref):
        torch.testing.assert_close(m, r, rtol=1e-5, atol=1e-7)
    # the default processors are back in place afterwards
    mods = dict(sd.unet.named_modules())
    assert not any(isinstance(mods[n].processor, D._RecordingProcessor) for n in D.CLIPER_LAYERS)


def test_seeded_noise_is_deterministic(sd, image):
    a = sd.self_attention(image, seed=5)
    torch.manual_seed(999)              # the global state before the call does not matter
    b = sd.self_attention(image, seed=5)
    c = sd.self_attention(image, seed=6)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    assert (a[0] - c[0]).abs().max() > 1e-6


def test_consume_streams_in_execution_order(sd, image):
    seen = []
    sd.self_attention(image, seed=5, consume=lambda i, p: seen.append((i, p.clone())))
    # up_blocks.3.attentions.0 runs before attentions.1: index 1 of CLIPER_LAYERS arrives first
    assert [i for i, _ in seen] == [1, 0]
    full = sd.self_attention(image, seed=5)
    torch.testing.assert_close(seen[1][1], full[0], rtol=0, atol=0)
    torch.testing.assert_close(seen[0][1], full[1], rtol=0, atol=0)


def test_consumer_may_modify_maps_in_place(sd, image):
    """The UNet continues from the layer output computed before the hand-over: zeroing the first layer's
    maps in the consumer must not change the maps of the layer after it."""
    seen = {}

    def wipe(i, p):
        seen[i] = p.clone()
        p.zero_()
    sd.self_attention(image, seed=5, consume=wipe)
    full = sd.self_attention(image, seed=5)
    torch.testing.assert_close(seen[0], full[0], rtol=0, atol=0)


def test_unknown_layer_rejected(sd, image):
    with pytest.raises(ValueError, match="no attention module"):
        sd.self_attention(image, seed=0, layers=("up_blocks.9.attn1",))
    with pytest.raises(ValueError, match="twice"):
        sd.self_attention(image, seed=0, layers=D.CLIPER_LAYERS[:1] * 2)


def test_bad_weights_paths(tmp_path):
    with pytest.raises(WeightsError, match="no such file or folder"):
        D.load_sd(str(tmp_path / "nope"), "cpu")
    with pytest.raises(WeightsError, match="not a complete diffusers"):
        D.load_sd(str(tmp_path), "cpu")


def test_random_is_deterministic():
    a = D.load_sd(D.RANDOM_TINY, "cpu")
    b = D.load_sd(D.RANDOM_TINY, "cpu")
    c = D.load_sd(D.RANDOM_TINY, "cpu", seed=1)
    wa, wb, wc = (next(x.unet.parameters()) for x in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


@pytest.mark.slow
def test_full_size_random_architecture(image):
    sd = D.load_sd(D.RANDOM_FULL, "cpu")
    assert sum(p.numel() for p in sd.unet.parameters()) > 800_000_000
    shapes = []
    sd.self_attention(image, seed=0, consume=lambda i, p: shapes.append((i, tuple(p.shape))))
    assert shapes == [(1, (5, 4096, 4096)), (0, (5, 4096, 4096))]
