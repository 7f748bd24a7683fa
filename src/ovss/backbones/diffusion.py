"""Stable Diffusion 2.1-base as a source of self-attention maps (CLIPer's fine-grained compensation).

A thin layer over diffusers: the VAE encodes the image, the PNDM scheduler noises the latent to one
time-step, and one UNet pass with the empty prompt records the per-head self-attention probabilities
of chosen layers (``methods.md`` §2.9 steps 12-15). Only those layers get a recording attention
processor; the rest of the UNet keeps diffusers' default (SDPA) processor, and the pass is stopped
right after the last requested layer (nothing after it can change the recorded maps).

Weights (:func:`load_sd`):

* a diffusers folder (``unet/ vae/ text_encoder/ tokenizer/ scheduler/``) or a hub id;
* ``None``: ``stabilityai/stable-diffusion-2-1-base`` from the cache / hub (``ovss.weights``);
* ``"random"``: the SD 2.1-base architecture (its published configs) with deterministic random init;
* ``"random-tiny"``: the same layer structure (4 blocks, 5 heads in ``up_blocks[3]``, 64x64 latents)
  with tiny widths, for fast tests.

For the random variants the tokenizer is open_clip's CLIP BPE tokenizer with zero padding, which
gives the same ids as SD 2.x's tokenizer (its pad token ``"!"`` has id 0).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from ..errors import WeightsError

RANDOM_FULL = "random"
RANDOM_TINY = "random-tiny"

#: CLIPer's ``attention_layers_to_use = [-4, -6]``: the chain order M_1..M_5 then M_6..M_10.
CLIPER_LAYERS = (
    "up_blocks.3.attentions.1.transformer_blocks.0.attn1",
    "up_blocks.3.attentions.0.transformer_blocks.0.attn1",
)

# --- SD 2.1-base configs (stabilityai/stable-diffusion-2-1-base, model_index + component configs) ---
SD21_UNET = dict(
    act_fn="silu", attention_head_dim=[5, 10, 20, 20], block_out_channels=[320, 640, 1280, 1280],
    center_input_sample=False, cross_attention_dim=1024,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    downsample_padding=1, dual_cross_attention=False, flip_sin_to_cos=True, freq_shift=0, in_channels=4,
    layers_per_block=2, mid_block_scale_factor=1, norm_eps=1e-05, norm_num_groups=32, num_class_embeds=None,
    only_cross_attention=False, out_channels=4, sample_size=64,
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    use_linear_projection=True,
)
SD21_VAE = dict(
    act_fn="silu", block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
    in_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32, out_channels=3, sample_size=512,
    up_block_types=["UpDecoderBlock2D"] * 4,
)
SD21_TEXT = dict(
    attention_dropout=0.0, bos_token_id=0, dropout=0.0, eos_token_id=2, hidden_act="gelu", hidden_size=1024,
    initializer_factor=1.0, initializer_range=0.02, intermediate_size=4096, layer_norm_eps=1e-05,
    max_position_embeddings=77, num_attention_heads=16, num_hidden_layers=23, pad_token_id=1,
    projection_dim=512, vocab_size=49408,
)
SD21_SCHEDULER = dict(
    beta_end=0.012, beta_schedule="scaled_linear", beta_start=0.00085, clip_sample=False,
    num_train_timesteps=1000, prediction_type="epsilon", set_alpha_to_one=False, skip_prk_steps=True,
    steps_offset=1, trained_betas=None,
)
# tiny variant: same block types and 64x64 self-attention with 5 heads in up_blocks[3]; small widths
TINY_UNET = dict(SD21_UNET, attention_head_dim=[5, 5, 5, 5], block_out_channels=[40, 40, 40, 40],
                 cross_attention_dim=32, layers_per_block=1, norm_num_groups=8)
TINY_VAE = dict(SD21_VAE, block_out_channels=[8, 8, 16, 16], layers_per_block=1, norm_num_groups=4)
TINY_TEXT = dict(SD21_TEXT, hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
                 projection_dim=32)


class _StopUNet(Exception):
    """Raised by the recording processor once the last requested layer has been recorded."""


@dataclass
class SD:
    """The Stable Diffusion components CLIPer uses, on one device and dtype."""
    vae: torch.nn.Module
    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: Callable[[str], torch.Tensor]    # prompt -> (1, 77) int64 ids
    scheduler: object
    device: torch.device
    dtype: torch.dtype
    use_attention_mask: bool = False
    _prompt_cache: dict = field(default_factory=dict, repr=False)

    # -- steps 12-14 ------------------------------------------------------------------------------
    def latents(self, image01: torch.Tensor) -> torch.Tensor:
        """(3,H,W) or (1,3,H,W) RGB in [0,1] -> z0 (1,4,64,64): nearest (floor) resize to 512x512, 2x-1,
        VAE posterior mean times the VAE scaling factor."""
        x = image01 if image01.ndim == 4 else image01[None]
        x = F.interpolate(x.float(), size=(512, 512), mode="nearest")
        x = (2.0 * x - 1.0).to(self.device, self.dtype)
        z = self.vae.encode(x).latent_dist.mean
        return z * self.vae.config.scaling_factor

    def timestep(self, time_step: int = 45, num_steps: int = 50) -> torch.Tensor:
        """The scheduler's ``timesteps[time_step]`` after ``set_timesteps(num_steps)`` (101 for 45 of 50)."""
        self.scheduler.set_timesteps(num_steps)
        return self.scheduler.timesteps[time_step]

    def noisy_latents(self, z0: torch.Tensor, t: torch.Tensor, seed: Optional[int]) -> torch.Tensor:
        """z_t = add_noise(z0, eps, t); eps drawn on the CPU in fp32 right after ``torch.manual_seed(seed)``
        (the global RNG, as the official code; seed None = unseeded), then moved to the device/dtype."""
        if seed is not None:
            torch.manual_seed(seed)
        eps = torch.randn(tuple(z0.shape), dtype=torch.float32).to(z0.device, z0.dtype)
        return self.scheduler.add_noise(z0, eps, t.reshape(1))

    def prompt_embedding(self, prompt: str = "") -> torch.Tensor:
        """``last_hidden_state`` of the text encoder for `prompt` (padded to 77, no attention mask unless the
        encoder's config asks for one); cached per prompt."""
        if prompt not in self._prompt_cache:
            ids = self.tokenizer(prompt).to(self.device)
            mask = (ids != 0).long() if self.use_attention_mask else None
            emb = self.text_encoder(ids, attention_mask=mask)[0]
            self._prompt_cache[prompt] = emb.to(self.dtype)
        return self._prompt_cache[prompt]

    # -- step 15 ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def self_attention(self, image01: torch.Tensor, *, seed: Optional[int], layers: Sequence[str] = CLIPER_LAYERS,
                       time_step: int = 45, num_steps: int = 50, prompt: str = "",
                       consume: Optional[Callable[[int, torch.Tensor], None]] = None) -> Optional[list]:
        """Self-attention probabilities ``softmax(d^-1/2 Q K^T)`` (heads, Q, K), fp32, of `layers` in one UNet
        pass at ``timesteps[time_step]`` with `prompt`.

        Without `consume`: returns the maps in the order of `layers`. With `consume`: calls
        ``consume(i, maps_of_layers[i])`` as each layer runs (UNet execution order) and keeps nothing, so
        a caller can reduce each layer's maps immediately (a few hundred MB each at full size); the maps
        handed over are the caller's to modify in place."""
        modules = dict(self.unet.named_modules())
        missing = [n for n in layers if n not in modules]
        if missing:
            raise ValueError(f"UNet has no attention module {missing}")
        if len(set(layers)) != len(layers):
            raise ValueError(f"a layer is requested twice: {list(layers)}")
        out: dict[int, torch.Tensor] = {}
        recorder = _Recorder(set(range(len(layers))), out.__setitem__ if consume is None else consume)

        saved = {n: modules[n].processor for n in layers}
        try:
            for i, n in enumerate(layers):
                modules[n].set_processor(_RecordingProcessor(i, recorder))
            z0 = self.latents(image01)
            t = self.timestep(time_step, num_steps)
            zt = self.noisy_latents(z0, t, seed)
            emb = self.prompt_embedding(prompt)
            try:
                self.unet(zt, t, encoder_hidden_states=emb, return_dict=False)
            except _StopUNet:
                pass
        finally:
            for n, p in saved.items():
                modules[n].set_processor(p)
        if recorder.remaining:
            raise RuntimeError(f"UNet pass did not reach layers {[layers[i] for i in sorted(recorder.remaining)]}")
        return None if consume is not None else [out[i] for i in range(len(layers))]


@dataclass
class _Recorder:
    """Which requested layers are still to come, and where their maps go."""
    remaining: set
    sink: Callable[[int, torch.Tensor], None]


class _RecordingProcessor:
    """Attention processor that computes the probabilities explicitly (baddbmm + softmax, as diffusers'
    classic ``AttnProcessor``) and hands them to the recorder in fp32. The layer's output is computed before
    the hand-over (the receiver may modify the maps in place); after the last requested layer the pass stops
    with :class:`_StopUNet` (its output is never needed)."""

    def __init__(self, index: int, recorder: _Recorder):
        self.index = index
        self.recorder = recorder

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        if encoder_hidden_states is not None or attention_mask is not None or attn.spatial_norm is not None \
                or attn.group_norm is not None or hidden_states.ndim != 3 or hidden_states.shape[0] != 1:
            raise NotImplementedError("recording is implemented for plain self-attention (attn1) layers, batch 1")
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(hidden_states))
        scores = torch.baddbmm(torch.empty(q.shape[0], q.shape[1], k.shape[1], dtype=q.dtype, device=q.device),
                               q, k.transpose(-1, -2), beta=0, alpha=attn.scale)
        probs = scores.float().softmax(dim=-1)
        del scores
        final = self.recorder.remaining == {self.index}
        h = None
        if not final:
            v = attn.head_to_batch_dim(attn.to_v(hidden_states))
            h = attn.batch_to_head_dim(torch.bmm(probs.to(v.dtype), v))
            h = attn.to_out[1](attn.to_out[0](h))
            if attn.residual_connection:
                h = h + hidden_states
            h = h / attn.rescale_output_factor
        self.recorder.remaining.discard(self.index)
        self.recorder.sink(self.index, probs)
        if final:
            raise _StopUNet
        return h


# ------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _clip_tokenizer_fn() -> Callable[[str], torch.Tensor]:
    import open_clip
    tok = open_clip.get_tokenizer("ViT-B-16")
    return lambda prompt: tok([prompt]).long()


def _hf_tokenizer_fn(tokenizer) -> Callable[[str], torch.Tensor]:
    def fn(prompt: str) -> torch.Tensor:
        return tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids
    return fn


def _random_components(tiny: bool, seed: int):
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**(TINY_UNET if tiny else SD21_UNET))
        vae = AutoencoderKL(**(TINY_VAE if tiny else SD21_VAE))
        text = CLIPTextModel(CLIPTextConfig(**(TINY_TEXT if tiny else SD21_TEXT)))
    return vae, unet, text, _clip_tokenizer_fn(), PNDMScheduler.from_config(SD21_SCHEDULER)


def _folder_components(src: str, dtype: torch.dtype, local_only: bool):
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer
    kw = dict(local_files_only=local_only)
    dkw = dict(torch_dtype=dtype, low_cpu_mem_usage=False, **kw)
    vae = AutoencoderKL.from_pretrained(src, subfolder="vae", **dkw)
    unet = UNet2DConditionModel.from_pretrained(src, subfolder="unet", **dkw)
    text = CLIPTextModel.from_pretrained(src, subfolder="text_encoder", dtype=dtype, **kw)
    tok = CLIPTokenizer.from_pretrained(src, subfolder="tokenizer", **kw)
    sched = PNDMScheduler.from_pretrained(src, subfolder="scheduler", **kw)
    return vae, unet, text, _hf_tokenizer_fn(tok), sched


def _to(m: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Move to device; cast only when needed (diffusers warns on casting already-typed models)."""
    if next(m.parameters()).dtype != dtype:
        m = m.to(dtype=dtype)
    return m.to(device=device).eval().requires_grad_(False)


def load_sd(weights: Optional[str] = None, device: Optional[torch.device | str] = None,
            dtype: torch.dtype = torch.float32, *, seed: int = 0) -> SD:
    """Stable Diffusion 2.1-base components for :meth:`SD.self_attention`.

    weights: a diffusers folder, a hub id (``"org/name"``), None (``sd21_base`` via ``ovss.weights``),
    ``"random"`` (full SD 2.1-base architecture, random init from `seed`) or ``"random-tiny"``.
    dtype applies on GPUs (fp16/bf16/fp32); on the CPU everything runs in fp32."""
    from .. import weights as W
    device = torch.device(device or "cpu")
    if device.type == "cpu":
        dtype = torch.float32
    if weights in (RANDOM_FULL, RANDOM_TINY):
        vae, unet, text, tok, sched = _random_components(weights == RANDOM_TINY, seed)
    else:
        src = weights
        local_only = True
        if src is None:
            src = W.resolve("sd21_base", None)
        elif not os.path.exists(os.fspath(src)) and isinstance(src, str) and _HUB_ID.match(src):
            local_only = False      # a hub id: diffusers/transformers fetch and cache the components
        else:
            src = W.resolve("sd21_base", src)
        try:
            vae, unet, text, tok, sched = _folder_components(os.fspath(src), dtype, local_only)
        except OSError as e:
            if local_only:
                raise WeightsError(f"sd_weights={src!r} is not a complete diffusers Stable Diffusion folder "
                                   f"(needs unet/ vae/ text_encoder/ tokenizer/ scheduler/): "
                                   f"{str(e).splitlines()[0][:300]}") from None
            raise W.MissingWeightsError(
                f"sd_weights={src!r}: could not load this Hugging Face hub repository as a diffusers Stable "
                f"Diffusion folder ({str(e).splitlines()[0][:200]}); offline, pass a local folder "
                f"(unet/ vae/ text_encoder/ tokenizer/ scheduler/) instead") from None
    use_mask = bool(getattr(text.config, "use_attention_mask", False))
    mods = [_to(m, device, dtype) for m in (vae, unet, text)]
    return SD(vae=mods[0], unet=mods[1], text_encoder=mods[2], tokenizer=tok, scheduler=sched, device=device,
              dtype=dtype, use_attention_mask=use_mask)
