"""`ovss app`: serve the Gradio demo (local by default; --share for a public Gradio link)."""
from __future__ import annotations

import os


def register(sub) -> None:
    p = sub.add_parser("app", help="web demo: upload an image, type classes, see the segmentation",
                       description="A local web app (Gradio) on the Segmenter API. Needs the app extra: "
                                   "pip install 'ovss[app]'. Models stay loaded between requests.")
    s = p.add_argument_group("server")
    s.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                   help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for the network)")
    s.add_argument("--port", type=int, default=int(os.environ["GRADIO_SERVER_PORT"])
                   if os.environ.get("GRADIO_SERVER_PORT") else None,
                   help="port (default: 7860, or the next free one)")
    s.add_argument("--share", action="store_true", help="also open a temporary public *.gradio.live link")
    s.add_argument("--max-pixels", type=int, default=20_000_000,
                   help="refuse larger images with a message (default 20 million pixels)")
    s.add_argument("--quiet", action="store_true", help="do not print the URL banner")

    g = p.add_argument_group("models (the page chooses method, CLIP model, preset and hyper-parameters)")
    g.add_argument("--method", "-m", default="sclip", help="method selected when the page opens (default sclip)")
    g.add_argument("--methods", default=None, help="comma-separated methods to offer (default: all)")
    g.add_argument("--clip", default=None, help="CLIP model selected when the page opens (default: each "
                                                "method's own, MetaCLIP-B/16 for corrclip, else ViT-B/16)")
    g.add_argument("--clip-weights", default=None,
                   help="local CLIP weights for --clip, or 'random' for every model (default: download/cache)")
    g.add_argument("--vfm-weights", default=None, help="local VFM weights (proxyclip/trident), or 'random'")
    g.add_argument("--sam", default="vit_b", help="SAM model for trident: vit_b or vit_h")
    g.add_argument("--sam-weights", default=None, help="local SAM checkpoint, or 'random'")
    g.add_argument("--sd-weights", default=None, help="Stable Diffusion 2.1-base folder or hub id (cliper), or 'random'")
    g.add_argument("--device", default=None, help="cuda, cuda:1, mps or cpu (default: best available)")
    g.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default: fp32 on CPU, fp16 on GPU)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..app import METHOD_CLIP, AppConfig, launch
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    cfg = AppConfig(method=args.method, clip=args.clip or METHOD_CLIP, clip_weights=args.clip_weights,
                    vfm_weights=args.vfm_weights,
                    sam=args.sam, sam_weights=args.sam_weights, sd_weights=args.sd_weights, device=args.device,
                    dtype=args.dtype, max_pixels=args.max_pixels, methods=methods)
    launch(cfg, host=args.host, port=args.port, share=args.share, quiet=args.quiet)
    return 0
