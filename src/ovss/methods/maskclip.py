"""MaskCLIP (Zhou et al., ECCV 2022): the last block's attention skipped (value path, identity attention),
residual and MLP kept in the original; `residual=False` gives the reduced variant of ClearCLIP / CLIPer's
ablation (spec §2.2). Run under SCLIP's protocol (the survey's MaskCLIP row is SCLIP's re-run)."""
from __future__ import annotations

from dataclasses import dataclass

from .dense import DenseMethod, DenseParams
from .sclip import PRESETS as SCLIP_PRESETS


@dataclass
class MaskCLIPParams(DenseParams):
    residual: bool = True          # False: reduced block (attention output only)


PRESETS = {b: {k: v for k, v in vals.items() if k != "area_thd"} | {"logit_scale": 40.0}
           for b, vals in SCLIP_PRESETS.items()}


class MaskCLIP(DenseMethod):
    name = "maskclip"
    paper = "Zhou et al., Extract Free Dense Labels from CLIP, ECCV 2022"
    repo = "chongzhou96/MaskCLIP"
    summary = "value path (identity attention) in the last block"
    Params = MaskCLIPParams
    PRESETS = PRESETS
    DEFAULT_PRESET = dict(short_side=336, slide_crop=224, slide_stride=112, logit_scale=40.0)

    def patch_features(self, x):
        r = self.params.residual
        return self.clip_features(x, "identity", residual=r, mlp=r)


METHODS = {"maskclip": MaskCLIP}
