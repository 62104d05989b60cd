"""Resident mode: one process runs a deploy app on study after study, paying imports and model loading once.

    monai-prune serve ct_seg_compressed -m BUNDLE -o OUT_ROOT --study DIR [DIR ...]    # these studies, then exit
    monai-prune serve ct_seg_compressed -m BUNDLE -o OUT_ROOT --watch INBOX            # until SIGTERM / Ctrl-C

A one-shot app launch pays interpreter start-up, the imports of torch, MONAI, the Deploy SDK and the runtimes, and
model loading (OpenVINO compiles the model there) before it reads the first slice: on a CPU box that is seconds per
study, as much as a compressed network's whole inference. ``serve`` imports the app once and calls its ``main`` per
study in the same process; the loaded runtime is kept (:func:`monai_prune.deploy.operators.cached_runtime`, keyed by
the model file's sha256, which is verified for every study). Every study still gets the full per-study checks of
:func:`monai_prune.deploy.runner.run_app` (input pre-flight, model and config sha256, atomic publication,
``run.json``).

Studies: each ``--study`` folder in turn, or every sub-folder of ``--watch`` once it is ready: it holds a file
named ``.ready``, or nothing in it changed for ``--settle`` seconds (a PACS export still copying is not taken).
Each study's result goes to ``OUT_ROOT/<study folder name>/``; ``OUT_ROOT/serve.jsonl`` gets one line per study
(name, exit code, seconds, first or steady), and a study already listed there is not processed again after a
restart. A study that fails is reported and skipped: it never stops the server. SIGTERM or Ctrl-C lets the current
study finish, then the server exits 0 with its summary: first-study latency and the steady-state median.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..errors import ConfigError, InputError

logger = logging.getLogger(__name__)

READY_MARKER = ".ready"
LOG_NAME = "serve.jsonl"


@dataclass
class StudyResult:
    study: str
    output: str
    exit_code: int
    seconds: float
    first: bool
    stages: Dict[str, float]


def load_app(script: str) -> Callable[[Sequence[str]], int]:
    """The ``main(argv)`` of a deploy app's ``app.py`` (imported once, with its SDK imports)."""
    spec = importlib.util.spec_from_file_location(f"monai_prune_served_app_{abs(hash(script))}", script)
    if spec is None or spec.loader is None:
        raise InputError(f"cannot import deploy app {script}")
    module = importlib.util.module_from_spec(spec)
    app_dir = os.path.dirname(script)
    sys.path.insert(0, app_dir)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(app_dir)
    main = getattr(module, "main", None)
    if not callable(main):
        raise InputError(f"{script} has no main(argv) to call per study (an app written for monai-prune's runner "
                         "defines one)")
    return main


def _snapshot(folder: str) -> tuple:
    """What a folder holds now: (relative path, size, mtime) of every file, to tell a still-growing export."""
    entries = []
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            try:
                st = os.stat(path)
            except OSError:  # removed while we looked: not settled
                return (time.time(),)
            entries.append((os.path.relpath(path, folder), st.st_size, st.st_mtime_ns))
    return tuple(sorted(entries))


class _Watch:
    """Sub-folders of ``inbox`` that are ready: a ``.ready`` file, or unchanged for ``settle`` seconds."""

    def __init__(self, inbox: str, settle: float) -> None:
        self.inbox, self.settle = inbox, settle
        self._seen: Dict[str, tuple] = {}

    def ready(self, done: set) -> List[str]:
        found = []
        now = time.monotonic()
        for name in sorted(os.listdir(self.inbox)):
            path = os.path.join(self.inbox, name)
            if name.startswith(".") or not os.path.isdir(path) or path in done:
                continue
            if os.path.isfile(os.path.join(path, READY_MARKER)):
                found.append(path)
                continue
            snap = _snapshot(path)
            previous = self._seen.get(path)
            if previous is None or previous[0] != snap:
                self._seen[path] = (snap, now)
            elif snap and now - previous[1] >= self.settle:
                found.append(path)
        return found


class _Stop:
    """SIGTERM/SIGINT: finish the current study, then stop.

    The signals are blocked (``pthread_sigmask``) in the server's thread from before the app is imported, so every
    thread the SDK, Holoscan and the runtimes start inherits the block, and they stay pending until the server looks
    between studies. A handler would not do: Holoscan installs its own while an app's graph runs, and on SIGTERM it
    interrupts the graph and forces the process to exit 1 three seconds later, mid-study."""

    SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})

    def __init__(self) -> None:
        self._requested = False
        self._mask: Optional[set] = None

    def __enter__(self):
        self._mask = signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)
        return self

    def _take(self, timeout: float) -> None:
        info = signal.sigtimedwait(self.SIGNALS, timeout)
        if info is not None and not self._requested:
            self._requested = True
            logger.info("%s received: finishing the current study, then stopping", signal.Signals(info.si_signo).name)

    @property
    def requested(self) -> bool:
        if not self._requested and signal.sigpending() & self.SIGNALS:
            self._take(0)
        return self._requested

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds``, or until a stop signal arrives."""
        self._take(seconds)

    def __exit__(self, *exc) -> None:
        while signal.sigpending() & self.SIGNALS:  # taken now, never delivered after we restore the mask
            self._take(0)
        signal.pthread_sigmask(signal.SIG_SETMASK, self._mask)


def _done_studies(log_path: str) -> set:
    done = set()
    if os.path.isfile(log_path):
        with open(log_path) as f:
            for line in f:
                try:
                    done.add(json.loads(line)["study"])
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut by a crash: that study is simply done again
    return done


def serve(app_script: str, model: str, output_root: str, studies: Sequence[str] = (), watch: Optional[str] = None,
          app_args: Sequence[str] = (), settle: float = 5.0, poll: float = 1.0, max_studies: Optional[int] = None,
          idle_exit: Optional[float] = None) -> Dict[str, Any]:
    """Run ``app_script`` on each study in one process; returns the summary (also logged).

    Args:
        app_script: the app's ``app.py`` (``main(argv)`` per study).
        model: the compressed bundle (``-m``).
        output_root: each study's results go to ``output_root/<study folder name>/``.
        studies: study folders to process, in order.
        watch: an inbox folder to watch for study folders (after ``studies``); None: stop after ``studies``.
        app_args: more app options for every study (e.g. ``["--backend", "openvino"]``).
        settle: seconds a watched study must stay unchanged to be taken (without a ``.ready`` file).
        poll: seconds between looks at the inbox.
        max_studies: stop after this many studies (benchmarks, tests).
        idle_exit: with ``watch``, stop after this many seconds without a new study.
    """
    if not studies and watch is None:
        raise ConfigError("give study folders (--study DIR ...) or an inbox to watch (--watch DIR)")
    for study in studies:
        if not os.path.isdir(study):
            raise InputError(f"study {study} is not a folder")
    if watch is not None and not os.path.isdir(watch):
        raise InputError(f"inbox {watch} is not a folder")
    if settle < 0 or poll <= 0:
        raise ConfigError(f"--settle must be >= 0 and --poll > 0, got {settle} and {poll}")
    names = [os.path.basename(os.path.normpath(s)) for s in studies]
    if len(set(names)) != len(names):
        raise ConfigError("two studies have the same folder name: their results would share an output folder")
    ours = logging.getLogger("monai_prune")
    # the SDK installs a root handler when the first app starts: with ours on the package logger, every line of
    # ours would print twice from the second study on
    propagate, ours.propagate = ours.propagate, not any(not isinstance(h, logging.NullHandler) for h in ours.handlers)
    try:
        with _Stop() as stop:  # before the import: the threads it starts inherit the blocked signals
            started = time.perf_counter()
            main = load_app(app_script)
            import_s = time.perf_counter() - started
            logger.info("serving %s with %s: app imported in %.2f s", os.path.basename(os.path.dirname(app_script)),
                        model, import_s)
            os.makedirs(output_root, exist_ok=True)
            log_path = os.path.join(output_root, LOG_NAME)
            done = _done_studies(log_path)
            queue = [os.path.abspath(s) for s in studies]
            watcher = _Watch(os.path.abspath(watch), settle) if watch is not None else None
            results: List[StudyResult] = []
            last_activity = time.monotonic()
            while not stop.requested and (max_studies is None or len(results) < max_studies):
                if not queue and watcher is not None:
                    queue = [p for p in watcher.ready(done) if p not in done]
                    if not queue:
                        if idle_exit is not None and time.monotonic() - last_activity > idle_exit:
                            break
                        stop.wait(poll)
                        continue
                if not queue:
                    break
                study = queue.pop(0)
                if study in done:
                    logger.info("%s already served (listed in %s): skipped", os.path.basename(study), LOG_NAME)
                    continue
                result = _serve_one(main, app_script, study, model, output_root, app_args,
                                        first=not results)
                results.append(result)
                done.add(study)
                last_activity = time.monotonic()
                with open(log_path, "a") as f:
                    f.write(json.dumps(asdict(result)) + "\n")
        summary = _summary(results, import_s)
        logger.info("served %d studies (%d failed): first %s s, steady-state median %s s", summary["studies"],
                    summary["failed"], summary["first_study_s"], summary["steady_state_median_s"])
    finally:
        ours.propagate = propagate
    return summary


def _serve_one(main, app_script: str, study: str, model: str, output_root: str, app_args: Sequence[str],
               first: bool) -> StudyResult:
    name = os.path.basename(os.path.normpath(study))
    output = os.path.join(output_root, name)
    argv = [app_script, "-i", study, "-o", output, "-m", model, *app_args]
    start = time.perf_counter()
    try:
        code = int(main(argv) or 0)
    except Exception as e:  # one bad study never stops the server
        logger.error("%s failed: %s: %s", name, type(e).__name__, e)
        code = 1
    seconds = time.perf_counter() - start
    stages: Dict[str, float] = {}
    record = os.path.join(output, "run.json")
    if code == 0 and os.path.isfile(record):
        with open(record) as f:
            stages = json.load(f).get("seconds", {})
    logger.info("%s: exit %d in %.2f s (%s)", name, code, seconds, "first study" if first else "steady state")
    return StudyResult(study=study, output=output, exit_code=code, seconds=round(seconds, 4), first=first,
                       stages=stages)


def _summary(results: Sequence[StudyResult], import_s: float) -> Dict[str, Any]:
    ok = [r for r in results if r.exit_code == 0]
    steady = [r.seconds for r in ok if not r.first]
    first = next((r.seconds for r in ok if r.first), None)
    return {"studies": len(results), "failed": len(results) - len(ok), "import_s": round(import_s, 4),
            "first_study_s": first, "steady_state_median_s": round(statistics.median(steady), 4) if steady else None,
            "results": [asdict(r) for r in results]}
