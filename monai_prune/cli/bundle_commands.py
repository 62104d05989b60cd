"""``monai-prune recipes`` and ``monai-prune compress-bundle``: the packaged recipes, and a MONAI bundle compressed
into a new bundle (:func:`monai_prune.bundle.compress_bundle`)."""

from __future__ import annotations

import argparse
import json
from typing import List

from .common import our_error, parse_shape


def add_parsers(sub) -> None:
    """The ``recipes`` and ``compress-bundle`` subcommands."""
    recipes = sub.add_parser("recipes", help="list the packaged compression recipes (bundle config overlays)")
    recipes.set_defaults(func=_cmd_recipes)

    bundle = sub.add_parser("compress-bundle", help="compress a MONAI bundle into a new bundle (source untouched)")
    bundle.add_argument("src", help="the source bundle folder (with configs/train.json, metadata.json, models/model.pt)")
    bundle.add_argument("--recipe", required=True, help="a packaged recipe name (see `monai-prune recipes`) or a file")
    bundle.add_argument("--out", required=True, help="the new bundle folder (must not exist)")
    bundle.add_argument("--epochs", type=int, help="fine-tuning epochs (default: the bundle's max_epochs)")
    bundle.add_argument("--set", type=parse_override, action="append", metavar="KEY=VALUE",
                        help="recipe or bundle parameter, e.g. --set prune#final_sparsity=0.7 --set image_size=[96,96] "
                             "(repeatable; prune#input_shape defaults to the bundle's metadata input)")
    bundle.add_argument("--int8", choices=["onnxruntime", "openvino", "auto"], help="also write an int8 model")
    bundle.add_argument("--calibration", type=int, default=8, help="int8 calibration samples (default 8)")
    bundle.add_argument("--target-device", default="cpu", help="where latency is measured (cpu)")
    bundle.add_argument("--repeats", type=parse_rounds, default=5,
                        help="timed rounds for the latency ratios and the int8 backend choice (median; default 5)")
    bundle.add_argument("--allow-degraded", action="store_true",
                        help="write the bundle even if it breaks the recipe's guardrails (marked DEGRADED)")
    bundle.add_argument("--input-shape", type=parse_shape, help="example input for MACs, exports and latency, e.g. "
                        "1,1,96,96,96 (default: the metadata's network_data_format)")
    bundle.add_argument("--dry-run", action="store_true", help="print what would be done; write nothing")
    bundle.set_defaults(func=_cmd_compress_bundle)


def parse_rounds(text: str) -> int:
    """A count of timed rounds: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} rounds: give at least 1")
    return value


def parse_override(text: str):
    """A ``--set KEY=VALUE``: the value parsed as JSON when it is JSON, else kept as text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. prune#final_sparsity=0.7), got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _cmd_recipes(args) -> int:
    from ..bundle import list_recipes

    for recipe in list_recipes():
        print(f"{recipe['name']:<22} {recipe['path']}\n{'':<22} {recipe['description']}")
    return 0


def _schedule_ids(config, prefix: str = "") -> List[str]:
    """Ids (``prune#schedule``) of the recipe's sparsity schedules: components built from plain recipe values."""
    found: List[str] = []
    if isinstance(config, dict):
        if str(config.get("_target_", "")).startswith("monai_prune.schedules."):
            return [prefix]
        for key, value in config.items():
            found += _schedule_ids(value, f"{prefix}#{key}" if prefix else str(key))
    return found


def check_recipe_overrides(recipe: str, overrides: dict) -> None:
    """Build the recipe's sparsity schedules with the ``--set`` values, so a bad value (``prune#final_sparsity=1.5``)
    is refused now rather than after the dense model was evaluated, when the trainer is built."""
    from monai.bundle import ConfigParser

    from ..bundle import recipe_path
    from ..errors import ConfigError

    if not overrides:
        return
    parser = ConfigParser(ConfigParser.load_config_file(recipe_path(recipe)))
    for key, value in overrides.items():
        if key in parser:
            parser[key] = value
    for schedule in _schedule_ids(parser.get()):
        try:
            parser.get_parsed_content(schedule)
        except Exception as e:
            error = our_error(e)
            if error is None:  # it needs the bundle (e.g. @network): checked when the bundle's trainer is built
                continue
            section = schedule.split("#", 1)[0] + "#"
            given = [f"{k}={json.dumps(v)}" for k, v in overrides.items() if k.startswith(section)]
            raise ConfigError(f"{schedule}" + (f" with --set {', '.join(given)}" if given else "")
                              + f": {error} (nothing was written)") from e


def _cmd_compress_bundle(args) -> int:
    from ..bundle import compress_bundle

    check_recipe_overrides(args.recipe, dict(args.set or []))
    result = compress_bundle(args.src, args.recipe, args.out, epochs=args.epochs, overrides=dict(args.set or []),
                             int8=args.int8, calibration_samples=args.calibration, target_device=args.target_device,
                             dry_run=args.dry_run, repeats=args.repeats, input_shape=args.input_shape,
                             allow_degraded=args.allow_degraded)
    if args.dry_run:
        print("dry run: nothing written. compress-bundle would:")
        for i, step in enumerate(result["steps"], 1):
            print(f"  {i}. {step}")
        return 0
    print(f"MACs x{result['macs']['after'] / result['macs']['before']:.3f}, params "
          f"x{result['params']['after'] / result['params']['before']:.3f}, latency {result['latency_s']['ratio']:.2f}x "
          f"faster on {result['latency_s']['device']}; " + ", ".join(
              f"{k} {v['before']:.4f} -> {v['after']:.4f}" for k, v in result["metrics"].items()))
    print(f"wrote {args.out} (fidelity card: docs/fidelity_card.md, .json)")
    print()
    print(result["card"].to_markdown())  # its first line: PASS, DEGRADED or UNGUARDED, and the class that lost most
    return 0
