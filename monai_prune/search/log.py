"""The search log ``candidates.jsonl``: one JSON line per measurement, its header the setup's fingerprint, so an
interrupted search resumes and a search of another setup is refused, never mixed in."""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..fidelity import json_safe
from ..pruning.plan import architecture_signature
from ..sensitivity import weights_digest
from .config import LOG_FORMAT, SearchConfig

logger = logging.getLogger(__package__)  # "monai_prune.search": the name the command line prints


class SearchLog:
    """``candidates.jsonl``: one JSON object per line, appended and flushed as each measurement is taken.

    A last line cut short (a run killed while writing it) is dropped with a warning and the search resumes without
    it; any other line that is not a record is an error that names the line."""

    def __init__(self, path: str, fingerprint: Dict[str, Any]) -> None:
        self.path, self.fingerprint = path, fingerprint
        self.records: Dict[str, Dict[str, Any]] = {}
        if os.path.exists(path):
            lines, whole = read_search_log(path)
            check_fingerprint(path, lines[0]["fingerprint"], fingerprint)
            if whole < os.path.getsize(path):
                logger.warning("%s: dropped its last line, cut short by an interrupted run (%d bytes); that "
                               "measurement is taken again", path, os.path.getsize(path) - whole)
                with open(path, "r+b") as f:
                    f.truncate(whole)
            elif whole and not _ends_with_newline(path):  # killed between a record and its newline
                with open(path, "a", encoding="utf-8") as f:
                    f.write("\n")
            self.records = {r["key"]: r for r in lines[1:]}
            logger.info("resuming the search from %s: %d measurements already taken", path, len(self.records))
        else:
            self._append({"kind": "header", "fingerprint": fingerprint, "format": LOG_FORMAT})

    def _append(self, record: Dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(json_safe(record)) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def get(self, key: str) -> Optional[Dict[str, Any]]:
        return self.records.get(key)

    def put(self, record: Dict[str, Any]) -> Dict[str, Any]:
        record = json_safe(record)
        self.records[record["key"]] = record
        self._append(record)
        return record


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def read_search_log(path: str) -> tuple:
    """``(records, whole)``: the records of a search log (the header first) and the byte length of its whole lines;
    a last line cut short by an interrupted run is left out (``whole`` ends before it). Reads only."""
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    records: List[Dict[str, Any]] = []
    offset = 0
    for number, raw in enumerate(lines, 1):
        if raw.strip():
            try:
                record = json.loads(raw)
            except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
                if number == len(lines):  # no newline after it: its write was cut short
                    return _checked_header(path, records), offset
                raise ConfigError(f"{path} line {number} is not valid JSON ({getattr(e, 'msg', e)}): the search log is "
                                  "damaged; remove that line to measure it again, or give another output folder "
                                  "(nothing was changed)") from e
            if not isinstance(record, dict) or not (record.get("kind") == "header" if number == 1 else "key" in record):
                raise ConfigError(f"{path} line {number} is not a search " + ("log header" if number == 1 else "record")
                                  + ": not a monai-prune search log; give another output folder (nothing was changed)")
            records.append(record)
        offset += len(raw) + (1 if number < len(lines) else 0)
    return _checked_header(path, records), offset


def _checked_header(path: str, records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    if not records or records[0].get("kind") != "header" or not isinstance(records[0].get("fingerprint"), dict):
        raise ConfigError(f"{path} is not a monai-prune search log; give another output folder")
    return records


def check_fingerprint(path: str, stored: Mapping[str, Any], fingerprint: Mapping[str, Any],
                      ignore: Sequence[str] = ()) -> None:
    """A log written by another setup (other weights, input, fine-tuning, ...) is refused, never mixed in."""
    changed = sorted(k for k in set(fingerprint) | set(stored)
                     if k not in ignore and fingerprint.get(k) != stored.get(k))
    if changed:
        raise ConfigError(f"{path} was written by a different setup ({', '.join(changed)} changed); its "
                          "measurements do not apply: give another output folder (nothing was changed)")


def search_fingerprint(model: nn.Module, example_input: torch.Tensor, setup_id: str, config: SearchConfig,
                       finetune: Optional[Callable[[nn.Module, nn.Module], None]]) -> Dict[str, Any]:
    """What makes two searches' measurements comparable: the log's header."""
    return {"architecture": architecture_signature(model), "weights": weights_digest(model),
            "input": list(example_input.shape), "setup": setup_id, "importance": config.importance,
            "seed": config.seed, "sensitivity_ratios": sorted(float(r) for r in config.sensitivity_ratios),
            "finetune": getattr(finetune, "__qualname__", None) if finetune is not None else None}


def check_resumable(out_dir: str, fingerprint: Mapping[str, Any], ignore: Sequence[str] = ()) -> None:
    """Refuse, before any work, an ``out_dir`` that a search cannot write to or resume: a file, a damaged
    ``search.json`` or ``candidates.jsonl``, a log of another setup. Reads only."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"output {out_dir} exists and is not a directory: give a folder (nothing was written)")
    summary = os.path.join(out_dir, "search.json")
    if os.path.exists(summary):
        try:
            with open(summary, encoding="utf-8") as f:
                data = json.load(f)
        except ValueError as e:
            raise ConfigError(f"{summary} is not valid JSON ({getattr(e, 'msg', e)}): not the summary of a monai-prune "
                              "search; remove it or give another output folder (nothing was changed)") from e
        if not isinstance(data, dict) or "fingerprint" not in data:
            raise ConfigError(f"{summary} is not the summary of a monai-prune search (a JSON object with "
                              "'fingerprint'); remove it or give another output folder (nothing was changed)")
    log = os.path.join(out_dir, "candidates.jsonl")
    if os.path.exists(log):
        records, _ = read_search_log(log)
        check_fingerprint(log, records[0]["fingerprint"], fingerprint, ignore)
