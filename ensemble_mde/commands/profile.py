"""`ensemble profile NAME_OR_RUN`: params, mult-adds, latency and FPS."""

from __future__ import annotations

import json
from pathlib import Path

from ensemble_mde.commands.options import add_device_option, add_set_option, int_at_least
from ensemble_mde.config import parse_size

DEFAULT_PROFILE_SIZE = (416, 544)  # the SG study's training crop, for a learner with no size of its own


def register(sub) -> None:
    p = sub.add_parser("profile", help="params, GMACs, latency and FPS of a learner or run",
                       description="Size and speed of a model: params, mult-adds (torch.utils.flop_counter, "
                                   "flops/2), median latency after warm-up, FPS.")
    p.add_argument("target", nargs="?", help="learner name (e.g. adabins), run folder, or 'meta' (the weighting "
                                             "network alone)")
    p.add_argument("--list", action="store_true", help="print the learner names and exit")
    p.add_argument("--learners", type=int, default=3, help="meta: number of base learners K (default 3)")
    add_set_option(p, "learner name or meta: override a key of its packaged config, e.g. --set meta.inputs=rgb")
    p.add_argument("--size", metavar="HxW", type=parse_size, help="input size (default: a run's own input size; a learner's "
                                                 "configured data.size, else 416x544)")
    p.add_argument("--batch-size", type=int_at_least(1, "--batch-size"), default=1, dest="batch_size")
    p.add_argument("--repeats", type=int_at_least(1, "--repeats"), default=10, help="timed forward passes")
    add_device_option(p)
    p.add_argument("--compile", action="store_true", help="time the torch.compile'd model (compiles first: minutes on CPU)")
    p.add_argument("--json", action="store_true", help="print one JSON object: params gmacs latency_ms fps")
    p.set_defaults(func=cmd_profile)


def cmd_profile(args) -> int:
    from ensemble_mde.errors import ConfigError

    if args.list:
        import base_learners

        print("\n".join(base_learners.available()))
        return 0
    if not args.target:
        raise ConfigError("name a learner, a run folder or 'meta' (learners: ensemble profile --list)", "target")
    from ensemble_mde.device import resolve_device
    from ensemble_mde.runs import model_input_size
    from ensemble_mde.loading import load_any_run, packaged_learner
    from ensemble_mde.profiling import profile_model

    device = resolve_device(args.device or "auto")
    if Path(args.target).exists():
        model, cfg = load_any_run(args.target, device=device)
    else:
        model, cfg = packaged_learner(args.target, num_learners=args.learners, overrides=args.overrides)
    size = args.size or model_input_size(cfg) or DEFAULT_PROFILE_SIZE
    result = profile_model(model, size, batch=args.batch_size, device=device, repeats=args.repeats,
                           compile=args.compile)
    if args.json:
        print(json.dumps({**{k: result[k] for k in ("params", "gmacs", "latency_ms", "fps")}, "input_size": list(size)}))
        return 0
    print(f"{args.target} at {size[0]}x{size[1]}, batch {args.batch_size} on {device}: "
          f"params {result['params']:,} ({result['params'] / 1e6:.2f}M)  GMACs {result['gmacs']:.3f}  "
          f"latency {result['latency_ms']:.1f} ms  FPS {result['fps']:.1f}")
    return 0
