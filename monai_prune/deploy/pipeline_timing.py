"""A deploy app timed end to end, DICOM series in to DICOM SEG out: the runs, their seconds per stage, the card.

What ``monai-prune time-pipeline`` and ``benchmarks/deploy_e2e.py`` share:

* :class:`Variant`: which model runs through which operator, backend and precision, one-shot or resident;
* :func:`run_app`: one app process (``python app.py -i SERIES -o OUT -m MODEL ...``), launch to exit, as a hospital
  runs it; :class:`Resident`: one ``monai-prune serve --watch`` process fed one study at a time (the first study
  counts from the process launch, later ones from the moment the study is dropped into the inbox);
* :func:`run_rounds`: rounds over every variant and series, the order rotated each round, a pause between runs;
* :func:`stage_seconds` and :func:`summarize`: each run's ``run.json`` turned into seconds per stage (DICOM load,
  preprocessing, network, postprocessing, SEG writing, the rest of the app; start-up = wall minus the app's total),
  medians over the runs;
* :func:`add_speedups`: each row's speed-ups over the dense row;
* :func:`pipeline_section` and :func:`write_card_pipeline`: the two medians as
  :attr:`~monai_prune.fidelity.FidelityCard.pipeline_s` and into a bundle's fidelity card (every copy of it).

A failed run raises :class:`AppRunError` (an :class:`~monai_prune.errors.InputError`) naming the run, its exit code
and the last error line of its stderr; ``log`` is the stderr file.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..errors import InputError

STDERR_TAIL_LINES = 40
PAUSE_S = 0.5  # between runs: threads left spinning by one runtime slow the next one down
STAGES = {  # column: run.json stages summed (any operator name)
    "load": ("dicom_loader", "series_selector", "series_to_volume"),
    "preprocessing": (".preprocessing",),
    "network": (".network",),
    "postprocessing": (".postprocessing",),
    "seg_write": ("dicom_seg_writer",),
}
STAGE_NAMES = {  # column: the card's name of the stage
    "load": "DICOM load", "preprocessing": "preprocessing", "network": "network (sliding window)",
    "postprocessing": "postprocessing (inversion to the input grid)", "seg_write": "DICOM SEG writing",
    "app_other": "rest of the app (model load, graph set-up)"}


class AppRunError(InputError):
    """An app (or serve) process failed; ``log`` is the file holding its stderr."""

    def __init__(self, message: str, log: str) -> None:
        super().__init__(message)
        self.log = log


@dataclass(frozen=True)
class Variant:
    name: str
    model: str  # key of the models mapping: "dense" (lone model.ts), "compressed" (bundle folder), ...
    backend: str
    precision: str
    operator: str  # "compressed" (monai-prune's operator) or "stock" (the SDK's MonaiBundleInferenceOperator)
    resident: bool = False  # one `monai-prune serve` process for every round, instead of one app process per run
    bundle_postprocessing: bool = False  # the bundle's own Invertd on float channels instead of the fast labels

    def app_args(self) -> List[str]:
        if self.operator == "stock":  # the runner forces TorchScript fp32 for the SDK's operator
            return ["--operator", "stock"]
        return ["--backend", self.backend, "--precision", self.precision, "--operator", self.operator,
                *(["--bundle-postprocessing"] if self.bundle_postprocessing else [])]


# ---------------------------------------------------------------------------------------------------- processes
def tail(path: str, lines: int = STDERR_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file."""
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-lines:])


def _failure(what: str, log: str) -> AppRunError:
    lines = [line.strip() for line in tail(log).splitlines() if line.strip()]
    last = next((line for line in reversed(lines) if "error" in line.lower()), lines[-1] if lines else "")
    return AppRunError(f"{what}; its stderr ends with: {last or '(nothing)'} (log: {log})", log)


def run_logged(cmd: Sequence[str], log_dir: str, name: str, cwd: str) -> float:
    """Run ``cmd`` with stdout/stderr in ``log_dir/name.{out,err}``; wall seconds from launch to exit. A failure
    raises :class:`AppRunError` with the command's exit code and the last error line of its stderr."""
    os.makedirs(log_dir, exist_ok=True)
    out, err = os.path.join(log_dir, f"{name}.out"), os.path.join(log_dir, f"{name}.err")
    with open(out, "wb") as fout, open(err, "wb") as ferr:
        start = time.perf_counter()
        code = subprocess.call(list(cmd), stdout=fout, stderr=ferr, cwd=cwd)
        seconds = time.perf_counter() - start
    if code != 0:
        raise _failure(f"{name} failed with exit code {code} ({' '.join(cmd)})", err)
    return seconds


def monai_prune_cli() -> List[str]:
    """The ``monai-prune`` command of this interpreter's environment."""
    script = os.path.join(os.path.dirname(sys.executable), "monai-prune")
    if os.path.isfile(script):
        return [script]
    return [sys.executable, "-c", "import sys; from monai_prune.cli import main; sys.exit(main())"]


def run_app(app: str, variant: Variant, models: Mapping[str, str], series: str, out: str, logs: str,
            name: str) -> Dict[str, Any]:
    """One process of the deploy app ``app`` (its app.py) on ``series`` into ``out`` (a new folder); its wall seconds,
    run.json and SEG file."""
    cmd = [sys.executable, app, "-i", series, "-o", out, "-m", models[variant.model], *variant.app_args()]
    wall = run_logged(cmd, logs, name, cwd=logs)  # the app's own files go to -o; nothing lands in the working folder
    return _result(out, name, wall)


def _result(out: str, name: str, wall: float, **extra) -> Dict[str, Any]:
    with open(os.path.join(out, "run.json")) as f:
        record = json.load(f)
    segs = sorted(glob.glob(os.path.join(out, "*.dcm")))
    if not segs:
        raise InputError(f"{name} exited 0 but wrote no DICOM SEG in {out}: time-pipeline needs an app that "
                         "segments (DICOM SEG out)")
    return {"wall_s": wall, "record": record, "seg": segs[0], **extra}


class Resident:
    """One ``monai-prune serve --watch`` process of ``app`` for a resident variant, fed one study per call: the first
    study's latency counts from the process launch (start-up, imports, model load and compile included), later ones
    from the moment the study is dropped into the inbox until its result line appears in ``serve.jsonl``."""

    def __init__(self, app: str, variant: Variant, models: Mapping[str, str], work: str, logs: str) -> None:
        self.app, self.variant, self.models, self.logs = app, variant, models, logs
        self.inbox = os.path.join(work, "inbox", variant.name)
        self.out = os.path.join(work, "served", variant.name)
        self.process: Optional[subprocess.Popen] = None
        self.count = 0
        for folder in (self.inbox, self.out):  # a kept work folder holds the studies of an earlier run
            shutil.rmtree(folder, ignore_errors=True)

    def run(self, series: str) -> Dict[str, Any]:
        os.makedirs(self.inbox, exist_ok=True)
        study = os.path.join(self.inbox, f"study{self.count:03d}")
        shutil.copytree(series, os.path.join(self.inbox, f".incoming{self.count:03d}"))  # copied outside the timing
        start = time.perf_counter()
        if self.process is None:
            os.makedirs(self.logs, exist_ok=True)
            self._err = open(os.path.join(self.logs, f"serve_{self.variant.name}.err"), "wb")
            self.process = subprocess.Popen(
                [*monai_prune_cli(), "serve", self.app, "-m", self.models[self.variant.model], "-o", self.out,
                 "--watch", self.inbox, "--poll", "0.05", "--", *self.variant.app_args()],
                stdout=subprocess.DEVNULL, stderr=self._err, cwd=self.logs)
        os.replace(os.path.join(self.inbox, f".incoming{self.count:03d}"), study)  # one rename: appears complete
        with open(os.path.join(study, ".ready"), "w"):
            pass
        line = self._wait_for(study)
        wall = time.perf_counter() - start
        self.count += 1
        if line["exit_code"] != 0:
            raise _failure(f"{self.variant.name} (serve) failed on {study} with exit code {line['exit_code']}",
                           self._err.name)
        return _result(line["output"], self.variant.name, wall, first=line["first"])

    def _wait_for(self, study: str) -> Dict[str, Any]:
        log = os.path.join(self.out, "serve.jsonl")
        while True:
            if os.path.isfile(log):
                with open(log) as f:
                    for text in f:
                        line = json.loads(text)
                        if line["study"] == study:
                            return line
            if self.process.poll() is not None:
                self._err.flush()
                raise _failure(f"the serve process of {self.variant.name} exited with {self.process.returncode}",
                               self._err.name)
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=120)
        if self.process is not None:
            self._err.close()


def run_rounds(app: str, variants: Sequence[Variant], models: Mapping[str, str], series: Sequence[str], work: str,
               rounds: int, pause: float = PAUSE_S, log=None) -> Dict[str, List[Dict[str, Any]]]:
    """``rounds`` rounds over every variant, round ``r`` starting at variant ``r`` (rotated order), each variant on
    every series in turn, ``pause`` seconds before each run. A resident variant's first run is its first study
    (process launch included); the later runs are its steady state. Results per variant name, in the order run,
    each with its round and series index; ``log(text)`` is told about each run."""
    runs: Dict[str, List[Dict[str, Any]]] = {v.name: [] for v in variants}
    logs = os.path.join(work, "logs")
    residents = {v.name: Resident(app, v, models, work, logs) for v in variants if v.resident}
    try:
        for r in range(rounds):
            order = [variants[(r + i) % len(variants)] for i in range(len(variants))]
            for v in order:
                for s, study in enumerate(series):
                    time.sleep(pause)
                    name = f"round{r}_{v.name}" + (f"_series{s}" if len(series) > 1 else "")
                    if v.resident:
                        result = residents[v.name].run(study)
                    else:
                        result = run_app(app, v, models, study, os.path.join(work, "runs", name), logs, name)
                    runs[v.name].append({**result, "round": r, "series": s})
                    if log is not None:
                        log(f"round {r + 1}/{rounds} {v.name}{f' series {s + 1}' if len(series) > 1 else ''}: "
                            f"{result['wall_s']:.1f} s wall, "
                            f"{result['record']['seconds'].get('app', float('nan')):.1f} s in the app")
    finally:
        for resident in residents.values():
            resident.stop()
    return runs


# ---------------------------------------------------------------------------------------------------- results
def stage_seconds(seconds: Mapping[str, float]) -> Dict[str, float]:
    """Per-stage seconds of one run.json: DICOM load, pre-processing, network, post-processing (with the
    inversion to the input grid), SEG writing, and the rest of the app (model load, graph set-up)."""
    out = {}
    for column, keys in STAGES.items():
        out[column] = sum(v for k, v in seconds.items() if any(k == key or (key.startswith(".") and k.endswith(key))
                                                                 for key in keys))
    out["app_other"] = max(0.0, seconds.get("app", 0.0) - sum(out.values()))
    return out


def _summed_medians(runs: Sequence[Dict[str, Any]], value) -> Optional[float]:
    """The median of ``value(run)`` over each series' runs, summed over the series (studies of different sizes are
    never mixed in one median: the result is the seconds for the whole set of studies); None without runs."""
    by_series: Dict[int, List[float]] = {}
    for r in runs:
        by_series.setdefault(r.get("series", 0), []).append(value(r))
    return sum(statistics.median(v) for v in by_series.values()) if by_series else None


def summarize(variant: Variant, results: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """One variant's runs as medians per series, summed over the series (one series: plain medians): ``wall_s``
    (steady state: every one-shot run, a resident variant's runs after its first), ``first_study_s`` (a resident
    variant's first run, else the median of the first series' runs), ``startup_s`` (wall minus the app's total:
    interpreter, imports; 0 for a resident study), ``stages_s`` (:func:`stage_seconds`)."""
    steady = [r for r in results if not r.get("first")] if variant.resident else list(results)
    first = next((r for r in results if r.get("first")), None)
    stages = {id(r): stage_seconds(r["record"]["seconds"]) for r in steady}
    record = results[-1]["record"]
    first_series = results[0].get("series", 0) if results else 0
    keys = list(stages[id(steady[0])]) if steady else []
    return {
        "variant": variant.name, "operator": variant.operator, "backend": record["backend"],
        "resident": variant.resident, "precision": record["precision"], "model": record["model"],
        "postprocessing": next(iter(record.get("stages", {}).values()), "bundle"),
        "wall_s": _summed_medians(steady, lambda r: r["wall_s"]),
        "wall_s_runs": [r["wall_s"] for r in steady],
        "wall_s_runs_series": [r.get("series", 0) for r in steady],
        "first_study_s": first["wall_s"] if first else statistics.median(
            r["wall_s"] for r in results if r.get("series", 0) == first_series),
        "startup_s": _summed_medians(steady, lambda r: 0.0 if variant.resident
                                     else r["wall_s"] - r["record"]["seconds"]["total"]),
        "stages_s": {k: _summed_medians(steady, lambda r, k=k: stages[id(r)][k]) for k in keys},
        "series": len({r.get("series", 0) for r in results}),
        "seconds_runs": [r["record"]["seconds"] for r in results],
        "seg": results[-1]["seg"],
    }


def add_speedups(rows: Sequence[Dict[str, Any]], stages: Sequence[str] = ()) -> None:
    """Each :func:`summarize` row's speed-ups over the first row (the dense pipeline): ``speedup_vs_dense_wall``,
    ``speedup_vs_dense_first_study`` and ``speedup_vs_dense_<stage>`` for ``stages``; None where a time is missing."""
    from ..fidelity.card_markdown import ratio

    dense = rows[0]
    for row in rows:
        row["speedup_vs_dense_wall"] = ratio(dense["wall_s"], row["wall_s"])
        row["speedup_vs_dense_first_study"] = ratio(dense["first_study_s"], row["first_study_s"])
        for stage in stages:
            row[f"speedup_vs_dense_{stage}"] = ratio(dense["stages_s"].get(stage), row["stages_s"].get(stage))


def pipeline_section(before: Mapping[str, Any], after: Mapping[str, Any], what: str) -> Dict[str, Any]:
    """:attr:`~monai_prune.fidelity.FidelityCard.pipeline_s` from two :func:`summarize` rows: ``before`` (the dense
    pipeline) and ``after`` (the compressed one), end to end, first study and stage by stage."""
    stages = {"start-up and imports": (before["startup_s"], after["startup_s"])}
    stages.update({name: (before["stages_s"].get(key), after["stages_s"].get(key))
                   for key, name in STAGE_NAMES.items()})
    return {"variant": after["variant"], "what": what,
            "end_to_end": {"before": before["wall_s"], "after": after["wall_s"]},
            "first_study": {"before": before["first_study_s"], "after": after["first_study_s"]},
            "stages": {k: {"before": b, "after": a} for k, (b, a) in stages.items()}}


def write_card_pipeline(bundle: str, pipeline: Optional[Dict[str, Any]]) -> Optional[str]:
    """Put ``pipeline`` into ``bundle``'s fidelity card: ``docs/fidelity_card.json`` and ``.md``, and where
    compress-bundle put copies, ``configs/metadata.json`` ``compression.fidelity_card`` and the card embedded in
    ``docs/README.md`` (each file written atomically; none of them is under a sha256 record). The card's path, or
    None when there is no pipeline or no card."""
    from .._io import atomic_write_text
    from ..fidelity import FidelityCard

    path = os.path.join(bundle, "docs", "fidelity_card.json")
    if pipeline is None or not os.path.isfile(path):
        return None
    previous = FidelityCard.load(path)
    card = FidelityCard.from_dict({**previous.to_dict(), "pipeline_s": pipeline})  # the normal form (plain JSON)
    card.to_json(path)
    atomic_write_text(os.path.join(bundle, "docs", "fidelity_card.md"), card.to_markdown())
    readme = os.path.join(bundle, "docs", "README.md")
    if os.path.isfile(readme):
        with open(readme) as f:
            text = f.read()
        # the README embeds the card as compress-bundle wrote it: without an end-to-end section, or with the last one
        for old in (previous, FidelityCard.from_dict({**previous.to_dict(), "pipeline_s": None})):
            embedded = old.to_markdown(heading_level=3)
            if embedded in text:
                atomic_write_text(readme, text.replace(embedded, card.to_markdown(heading_level=3)))
                break
    metadata_path = os.path.join(bundle, "configs", "metadata.json")
    if os.path.isfile(metadata_path):
        with open(metadata_path) as f:
            metadata = json.load(f)
        compression = metadata.get("compression")
        if isinstance(compression, dict) and "fidelity_card" in compression:
            compression["fidelity_card"] = card.to_dict()
            atomic_write_text(metadata_path, json.dumps(metadata, indent=2))
    return path


def machine() -> Dict[str, Any]:
    """CPU model, CPU count, torch's intra-op threads and version (the app processes use the same defaults)."""
    import torch

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
