"""``monai-prune demo``, ``search`` and ``report``: the synthetic-CT demo, the search for the most compressed model
that keeps every per-class guardrail, and the report of a search."""

from __future__ import annotations

import argparse
import json
import logging
import os

logger = logging.getLogger("monai_prune.cli")


def add_demo_parser(sub) -> None:
    """The ``demo`` subcommand (listed first)."""
    demo = sub.add_parser("demo", help="train, prune, fine-tune, export and benchmark a 3D UNet on synthetic CT")
    demo.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    demo.add_argument("--quick", action="store_true", help="a tiny run (tens of seconds) for smoke tests")
    demo.add_argument("--no-int8", action="store_true", help="skip quantizing the pruned model to int8")
    demo.set_defaults(func=_cmd_demo)


def add_parsers(sub) -> None:
    """The ``search`` and ``report`` subcommands."""
    search = sub.add_parser("search", help="find the most compressed model that keeps every per-class guardrail "
                                           "(built-in synthetic CT)",
                            description="Prunes the demo's spleen-style UNet at several ratios, fine-tunes each with "
                                        "distillation, measures per-class Dice and sliding-window latency on every "
                                        "backend (fp32 and int8), and keeps the fastest candidate that holds every "
                                        "guardrail; with --overlaps/--sw-batch-sizes/--roi-sizes it then measures those pipeline "
                                        "knobs on the chosen model under the same guardrails and ships the fastest "
                                        "passing setting in chosen/pipeline.json. Re-run with the same --out to "
                                        "resume. Exit 2 when none holds.")
    search.add_argument("--out", default="search_output", help="output folder; an earlier search there is resumed")
    search.add_argument("--quick", action="store_true", help="tiny data and epochs (seconds-to-minutes; for tests)")
    search.add_argument("--guardrails", help='JSON object or .json file, e.g. \'{"max_delta_dice": 0.02}\'')
    search.add_argument("--max-delta-dice", dest="max_delta_dice", type=float, help="largest Dice drop, per class")
    search.add_argument("--min-dice", dest="min_dice", action="append", metavar="[CLASS=]FLOOR",
                        help="Dice floor for every class, or per class (repeatable)")
    search.add_argument("--max-hd95-increase-mm", dest="max_hd95_increase_mm", type=float)
    search.add_argument("--max-latency-ratio", dest="max_latency_ratio", type=float)
    search.add_argument("--target-macs", dest="target_macs", type=float)
    search.add_argument("--ratios", type=_csv(float), help="channel ratios, e.g. 0.25,0.5,0.75")
    search.add_argument("--strategy", choices=["grid", "bisect"])
    search.add_argument("--bisect-steps", dest="bisect_steps", type=int)
    search.add_argument("--layers", dest="layer_modes", type=_csv(), help="uniform and/or sensitivity")
    search.add_argument("--precision", dest="precisions", type=_csv(), help="fp32 and/or int8 (default both)")
    search.add_argument("--backends", type=_csv(), help="runtimes to time (default: every installed one)")
    search.add_argument("--objective", choices=["latency", "macs", "size"])
    search.add_argument("--int8-keep-fp32", dest="int8_keep_fp32", choices=["none", "sensitivity"],
                        help="sensitivity: keep fp32 the layers whose int8 alone costs more than the tolerance (slow)")
    search.add_argument("--overlaps", type=_csv(float), metavar="F,F",
                        help="pipeline knob: sliding-window overlaps to try with the chosen model (default 0.25), "
                             "e.g. 0.1,0")
    search.add_argument("--sw-batch-sizes", dest="sw_batch_sizes", type=_csv(int), metavar="N,N",
                        help="pipeline knob: sliding-window batch sizes to try with the chosen model (default 1), "
                             "e.g. 2,4")
    search.add_argument("--roi-sizes", dest="roi_sizes", type=_roi_values, metavar="whole,N",
                        help="pipeline knob: sliding windows to try with the chosen model: 'whole' (one window over "
                             "each whole volume) or N (an N-cube), e.g. whole,80 (default: the demo's own windows)")
    search.add_argument("--finetune-epochs", dest="finetune_epochs", type=int, help="distillation epochs per candidate")
    search.set_defaults(func=_cmd_search, precisions=["fp32", "int8"])

    report = sub.add_parser("report", help="report.md + PNGs (Pareto, per-class Dice, sensitivity, overlay) of a search")
    report.add_argument("run_dir", help="the output folder of monai-prune search")
    report.set_defaults(func=_cmd_report)


def _cmd_demo(args) -> int:
    from ..demo import DemoConfig, quick_config, run_demo

    config = quick_config(args.out) if args.quick else DemoConfig(out=args.out)
    config.int8 = not args.no_int8
    results = run_demo(config)
    d, p, q = results["dense"], results["pruned"], results.get("int8", {})
    print(f"dense  Dice {d['mean_dice']:.4f}  MACs {d['macs'] / 1e9:.2f}G  params {d['params'] / 1e6:.2f}M")
    print(f"pruned Dice {p['mean_dice']:.4f}  MACs {p['macs'] / 1e9:.2f}G  params {p['params'] / 1e6:.2f}M  "
          f"best backend {p['best_backend']}: {results['speedup_vs_dense_torch'][p['best_backend']]:.2f}x faster "
          "than dense torch eager")
    if q.get("status") == "ok":
        print(f"int8   Dice {q['mean_dice']:.4f}  {q['backend']}: {q['speedup_vs_dense_torch']:.2f}x faster than dense "
              f"torch eager, {q['size_bytes']['fp32'] / q['size_bytes']['int8']:.1f}x smaller than pruned fp32; "
              f"fp32 fallback: {', '.join(q['fallback_layers']) or 'none'}")
        for warning in q["warnings"]:
            print(f"WARNING: {warning}")
    elif q.get("status") == "refused":
        print(f"int8   REFUSED (Dice drop tolerance {q['max_delta']['dice']}): {q['reason']}")
    print(f"report: {results['report']}")
    return 0


def _guardrails(args) -> dict:
    """Guardrails from ``--guardrails`` (JSON text or a .json file) and the shortcut flags (which win)."""
    from ..errors import ConfigError

    guardrails: dict = {}
    if args.guardrails:
        text = args.guardrails
        if os.path.isfile(text):
            with open(text, encoding="utf-8") as f:
                text = f.read()
        try:
            guardrails = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--guardrails must be JSON (or a JSON file), e.g. '{{\"max_delta_dice\": 0.02}}': {e}")
        if not isinstance(guardrails, dict):
            raise ConfigError(f"--guardrails must be a JSON object, got {type(guardrails).__name__}")
    for key in ("max_delta_dice", "max_hd95_increase_mm", "max_latency_ratio", "target_macs"):
        if getattr(args, key) is not None:
            guardrails[key] = getattr(args, key)
    if args.min_dice:
        floors = {}
        for item in args.min_dice:
            name, sep, value = item.rpartition("=")
            try:
                floors[name if sep else "*"] = float(value)
            except ValueError:
                raise ConfigError(f"--min-dice takes FLOOR or CLASS=FLOOR, got {item!r}") from None
        guardrails["min_dice"] = floors.pop("*") if list(floors) == ["*"] else floors
        if "*" in floors:
            raise ConfigError("--min-dice: give one FLOOR for every class or CLASS=FLOOR entries, not both")
    return guardrails


def _csv(kind=str):
    def parse(text: str):
        try:
            return [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated values, got {text!r}") from None

    return parse


def _roi_values(text: str) -> list:
    values = []
    for item in (v.strip() for v in text.split(",") if v.strip()):
        if item == "whole":
            values.append(item)
        elif item.isdigit() and int(item) > 0:
            values.append(int(item))
        else:
            raise argparse.ArgumentTypeError(f"--roi-sizes takes 'whole' or positive integers, got {item!r}")
    return values


def _cmd_search(args) -> int:
    from ..search import SearchConfig
    from ..search_workflow import SearchDemoConfig, check_search_demo, quick_search_config, run_search_demo

    guardrails = _guardrails(args)
    defaulted = not guardrails
    if defaulted:
        guardrails = {"max_delta_dice": 0.02}
    options = {k: getattr(args, k) for k in ("ratios", "strategy", "bisect_steps", "layer_modes", "precisions",
                                              "backends", "objective", "int8_keep_fp32") if getattr(args, k) is not None}
    knobs = {k: v for k, v in (("overlap", args.overlaps), ("sw_batch_size", args.sw_batch_sizes),
                               ("roi_size", args.roi_sizes)) if v}
    if knobs:
        options["pipeline_knobs"] = knobs
    search_config = SearchConfig(**options)
    config = quick_search_config() if args.quick else SearchDemoConfig()
    if args.finetune_epochs is not None:
        config.finetune_epochs = args.finetune_epochs
    check_search_demo(args.out, guardrails, search_config, config)  # refused before anything is trained or written
    if defaulted:
        logger.info("no guardrails given: max_delta_dice 0.02 (per class)")
    result = run_search_demo(args.out, guardrails, search_config, config)
    print(result.table())
    print()
    if result.pipeline is not None:
        from ..search.report import knobs_table

        print("Pipeline knobs of the chosen model:")
        print(knobs_table(result.pipeline))
        print()
    print(result.card.to_markdown())
    print(f"chosen model: {result.paths['chosen']}; report: monai-prune report {args.out}")
    return 0


def _cmd_report(args) -> int:
    from ..report import write_search_report

    written = write_search_report(args.run_dir)
    print(f"wrote {written['report']} and " + ", ".join(os.path.basename(p) for k, p in written.items()
                                                        if k != "report"))
    return 0
