"""Choosing and reporting tune-pipeline's settings: seconds, saving, per-class ΔDice and pass per setting
(:func:`summarise`), the combined row of the best passing knobs (:func:`combined_setting`), the ``--set`` lines
that ship a passing setting (:func:`ship_lines`) and the Markdown report (:func:`to_markdown`)."""

from __future__ import annotations

import json
import statistics
from typing import Any, Dict, List, Optional

from .._markdown import markdown_table
from .knob_values import value_text


def summarise(group: List[Dict[str, Any]], baseline: Dict[str, Any], max_delta: float,
               seconds_from: Optional[Dict[str, Any]] = None) -> None:
    """seconds (mean over images of the median over repeats), saving, mean per-class Dice, ΔDice, pass."""
    for s in group:
        s["seconds_per_image"] = [statistics.median(t) for t in s["_times"]]
        s["seconds"] = statistics.fmean(s["seconds_per_image"])
        names = list(s["_dice"][0]) if s["_dice"] else []
        s["dice"] = {n: statistics.fmean(d[n] for d in s["_dice"]) for n in names}
    base_dice = baseline["dice"]
    base_seconds = (seconds_from or baseline)["seconds"]
    for s in group:
        s["saving_pct"] = 100.0 * (1.0 - s["seconds"] / base_seconds) if base_seconds > 0 else 0.0
        s["delta_dice"] = {n: s["dice"][n] - base_dice[n] for n in s["dice"]}
        if s["delta_dice"]:
            s["worst_class"] = min(s["delta_dice"], key=s["delta_dice"].get)
            s["worst_delta_dice"] = s["delta_dice"][s["worst_class"]]
        else:
            s["worst_class"], s["worst_delta_dice"] = None, 0.0
        s["passed"] = all(d >= -max_delta for d in s["delta_dice"].values())


def combined_setting(settings: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The combined row: the best-saving passing value of every knob that saved time; None unless two knobs did."""
    best: Dict[str, Dict[str, Any]] = {}
    for s in settings[1:]:
        if s["passed"] and s["saving_pct"] > 0 and (s["knob"] not in best
                                                    or s["saving_pct"] > best[s["knob"]]["saving_pct"]):
            best[s["knob"]] = s
    if len(best) < 2:
        return None
    overrides: Dict[str, Any] = {}
    for s in best.values():
        overrides.update(s["overrides"])
    return {"knob": "combined", "value": {s["knob"]: s["value"] for s in best.values()}, "overrides": overrides}


def ship(key: str, value: Any) -> str:
    """The ``--set KEY=VALUE`` argument of an override."""
    return f"--set {key}={json.dumps(value, separators=(',', ':'))}"


def carried(key: str, config: Dict[str, Any], train: Optional[Dict[str, Any]]) -> bool:
    """Whether ``compress-bundle --set key=...`` records the value in the compressed ``configs/inference.json``
    (:func:`monai_prune.bundle_configs.rewrite_configs`: top-level ids of inference.json that train.json has)."""
    return ("#" not in key and key in config and not isinstance(config[key], dict)
            and isinstance(train, dict) and key in train)


# ---------------------------------------------------------------------------------------------------- report
def _before_after(result: Dict[str, Any], row: Dict[str, Any]) -> str:
    base = result["baseline"]
    if row["knob"] == "baseline":
        return ", ".join(f"{k} {value_text(v)}" for k, v in base.items())
    if row["knob"] == "combined":
        return ", ".join(f"{k} {value_text(base[k])} -> {value_text(v)}" for k, v in row["value"].items())
    return f"{value_text(base[row['knob']])} -> {value_text(row['value'])}"


def ship_lines(result: Dict[str, Any]) -> List[str]:
    """One line per passing setting: what it costs, what it saves, and the ``--set`` overrides that ship it."""
    lines = []
    for row in result["rows"]:
        if row["knob"] == "baseline" or not row["passed"]:
            continue
        what = "combined: " if row["knob"] == "combined" else f"{row['knob']} "
        saving = row["saving_pct"]
        time_text = f"saves {saving:.0f}%" if saving >= 0 else f"costs {-saving:.0f}% more time"
        worst = (f"worst ΔDice {row['worst_delta_dice']:+.4f} ({row['worst_class']})" if row["worst_class"]
                 else "no foreground class measured")
        lines.append(f"{what}{_before_after(result, row)}: {worst}, {time_text}; ship: {' '.join(row['set'])}"
                     + _carry_note(row))
    return lines


def _carry_note(row: Dict[str, Any]) -> str:
    """Which of a row's ``--set`` ids ``compress-bundle`` records in the compressed ``configs/inference.json``."""
    recorded = [k for k in row["overrides"] if k in row["carried_ids"]]
    missing = [k for k in row["overrides"] if k not in row["carried_ids"]]
    notes = []
    if recorded:
        notes.append(f"compress-bundle records {', '.join(recorded)} in configs/inference.json and, as train.json "
                     "has it too, fine-tunes with it")
    if missing:
        notes.append(f"inference#{', inference#'.join(missing)}: compress-bundle writes it into configs/inference.json "
                     "only (fine-tuning unchanged)")
    return f" ({'; '.join(notes)})" if notes else ""


def to_markdown(result: Dict[str, Any]) -> str:
    """tune-pipeline's report: one table row per setting, then the lines that ship the passing ones."""
    rows = []
    for row in result["rows"]:
        value = _before_after(result, row)
        dice_text = ", ".join(f"{n} {d:.4f}" for n, d in row["dice"].items()) or "-"
        worst = (f"{row['worst_delta_dice']:+.4f} ({row['worst_class']})" if row["worst_class"] else "-")
        saving = "-" if row["knob"] == "baseline" else f"{row['saving_pct']:+.1f}%"
        rows.append([row["knob"], value, f"{row['seconds']:.3f}", saving, worst, dice_text,
                     "PASS" if row["passed"] else "FAIL"])
    model = result["model"]
    text = [f"Pipeline knobs of {model['name']} ({model['backend']} {model['precision']}, {model['path']}) on "
            f"{len(result['images'])} image(s), {result['repeats']} timed run(s) each: seconds are end to end "
            "(preprocessing + inferer + postprocessing) per image; Dice is against the reference labels of "
            f"{result['reference']}; a setting passes when every class keeps ΔDice >= -{result['max_delta']:g} "
            "against the baseline.", "",
            markdown_table(["knob", "value", "seconds", "saving vs baseline", "worst class ΔDice",
                            "Dice vs reference", "pass"], rows)]
    lines = result.get("lines") or ship_lines(result)
    text += ["", "Ship a passing setting: `monai-prune tune-pipeline ... --write-bundle OUT` writes a copy of this "
             "bundle that runs the one saving most (same weights, measurements recorded), or compress the source "
             "bundle again with `monai-prune compress-bundle SRC ...` and these values:", ""]
    text += [f"- {line}" for line in lines] if lines else ["- no setting other than the baseline passed"]
    return "\n".join(text)
