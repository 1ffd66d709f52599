"""`ensemble predict RUN IMAGE...`: depth maps (16-bit PNG in mm, or metres x 256 for a run whose
range mm cannot hold (KITTI's 80 m); float32 .npy in metres; colourised PNG) for images; a
stacked ensemble also its weights and uncertainty."""

from __future__ import annotations

from pathlib import Path

from ensemble_mde.commands.options import add_device_option


def register(sub) -> None:
    p = sub.add_parser("predict", help="depth maps for images: 16-bit PNG (mm; KITTI runs m x 256), float32 .npy (m), colourised PNG",
                       description="Predict depth for images of any size (turned upright as their EXIF "
                                   "orientation says, resized to the run's input size, the depth resized back). "
                                   "Writes STEM_depth.png (16-bit: mm, or metres x 256 as KITTI stores depth for a run predicting "
                                   "beyond 65.535 m; its 'Depth units per metre' text says which), STEM_depth.npy "
                                   "(float32, m) and "
                                   "STEM_depth_color.png; a stacked ensemble with weights also STEM_weights.png, "
                                   "STEM_weights.npy ([K,H,W]) and its uncertainty, the spread of the base depths "
                                   "under its weights, as STEM_uncertainty.npy (m) and STEM_uncertainty.png. "
                                   "Outputs are named after each image's stem, with its extension and folders "
                                   "added where two images would share a name, or where --out holds a file of that "
                                   "name that is one of the images or was not made from that image (each PNG names "
                                   "its image in its 'Source' text, and speaks for the .npy files of its stem): an "
                                   "image's own earlier outputs are replaced, no other file.")
    p.add_argument("run", help="run folder or checkpoint")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--out", default="predictions", metavar="DIR")
    p.add_argument("--flip-tta", action="store_true")
    add_device_option(p)
    p.set_defaults(func=cmd_predict)


def cmd_predict(args) -> int:
    import torch

    from ensemble_mde.device import resolve_device
    from ensemble_mde.data import load_rgb
    from ensemble_mde.evaluation import resize_rgb
    from ensemble_mde.runs import model_input_size
    from ensemble_mde.loading import load_any_run
    from ensemble_mde.metrics import flip_tta
    from ensemble_mde.uncertainty import blend_spread
    from ensemble_mde.visualize import (PREDICTION_SUFFIXES, prediction_stems, save_colorized_depth,
                                        png_units_per_metre, save_colorized_uncertainty, save_depth_png, save_npy,
                                        save_weight_maps)

    device = resolve_device(args.device or "auto")
    model, cfg = load_any_run(args.run, device=device, for_inference=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    size = model_input_size(cfg)
    units_per_metre = png_units_per_metre(cfg["data"]["max_depth"])
    if units_per_metre != 1000:
        print(f"depth PNGs in metres x {units_per_metre} (KITTI's convention): the run predicts up to "
              f"{cfg['data']['max_depth']:g} m, beyond a millimetre PNG's 65.535 m")
    for image, stem in zip(args.images, prediction_stems(args.images, out)):
        rgb = load_rgb(image, upright=True)  # [3,H,W] in [0,1]; grayscale/RGBA converted
        h, w = rgb.shape[-2:]
        in_size = size or (h, w)
        passes = []  # the outputs of the straight pass (and of the mirrored image, with flip TTA)

        def forward(t):
            passes.append(model(t))
            return passes[-1]["depth"]

        def to_image(maps):  # [1,C,h,w] -> [C,H,W] at the image's size, bilinear as the depth
            return torch.nn.functional.interpolate(maps.float(), size=(h, w), mode="bilinear",
                                                   align_corners=False)[0].cpu()

        with torch.inference_mode():
            x = resize_rgb(rgb[None].to(device), in_size)
            depth = flip_tta(forward, x) if args.flip_tta else forward(x)
            outputs = passes[0]
            sigma = blend_spread(outputs, passes[1] if args.flip_tta else None, depth)
            depth = to_image(depth)[0]
        depth_png, color_png, weights_png, depth_npy, weights_npy, sigma_npy, sigma_png = (
            out / f"{stem}{suffix}" for suffix in PREDICTION_SUFFIXES)
        save_depth_png(depth, depth_png, units_per_metre=units_per_metre, source=image)  # first: it names the image for the .npy files
        save_npy(depth, depth_npy)
        save_colorized_depth(depth, color_png, max_depth=cfg["data"]["max_depth"],
                             title=f"{Path(image).name}: depth (m)", source=image)
        written = [depth_png, depth_npy, color_png]
        if "weights" in outputs:
            save_weight_maps(outputs["weights"][0].float().cpu(), getattr(model, "names", None), weights_png,
                             source=image)
            save_npy(to_image(outputs["weights"]), weights_npy)
            written += [weights_png, weights_npy]
        if sigma is not None:
            sigma = to_image(sigma)[0]
            save_npy(sigma, sigma_npy)
            save_colorized_uncertainty(sigma, sigma_png, title=f"{Path(image).name}: ensemble spread (m)",
                                       source=image)
            written += [sigma_npy, sigma_png]
        note = ("; no weight map or uncertainty: the relaxed head predicts depth, not weights"
                if "base_depths" in outputs and "weights" not in outputs else "")
        print(f"{image}: depth {float(depth.min()):.2f}-{float(depth.max()):.2f} m "
              f"(median {float(depth.median()):.2f}) -> {', '.join(map(str, written))}{note}")
    return 0
