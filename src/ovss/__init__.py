"""ovss: training-free open-vocabulary semantic segmentation with frozen CLIP (and DINO / SAM / Stable Diffusion)."""
__version__ = "0.1.0"

from .errors import InputError, OvssError, WeightsError  # noqa: E402

__all__ = ["Segmenter", "SegmentationResult", "list_methods", "OvssError", "InputError", "WeightsError", "__version__"]


def __getattr__(name):  # lazy: `import ovss` stays cheap (no torch import) until the API is used
    if name in ("Segmenter", "SegmentationResult"):
        from . import api
        return getattr(api, name)
    if name == "list_methods":
        from .methods import list_methods
        return list_methods
    raise AttributeError(f"module 'ovss' has no attribute {name!r}")
