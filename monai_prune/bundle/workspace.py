"""compress-bundle's work folders: a private run copy of the source, stale folders of killed runs, SIGTERM."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
from typing import Any, List

from .checks import COPY_LIMIT, OWNER_FILE, RUN_SKIPPED

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------- work folders
def _copy_or_link(path: str, target: str) -> str:
    if os.path.getsize(path) <= COPY_LIMIT:
        return shutil.copy2(path, target)
    os.symlink(os.path.realpath(path), target)  # a large data file: read through the link, never rewritten in place
    return target


def private_run_root(src: str, run_root: str, weights: str) -> None:
    """The bundle root of the fine-tuning run. Whatever the bundle's handlers write under ``@bundle_root``
    (``@output_dir``, checkpoints, logs, caches) must land here, never in the source: folders are real folders, small
    files copies, only large files symlinks to the source's (data the trainer reads); the source's output folder
    (``eval``) and models are left out, the dense weights copied."""
    os.makedirs(os.path.join(run_root, "models"))
    shutil.copytree(os.path.join(src, "configs"), os.path.join(run_root, "configs"))
    for entry in os.listdir(src):
        path, target = os.path.join(src, entry), os.path.join(run_root, entry)
        if entry in RUN_SKIPPED:
            continue
        if os.path.isdir(path):
            shutil.copytree(path, target, copy_function=_copy_or_link, ignore_dangling_symlinks=True)
        elif os.path.isfile(path):
            _copy_or_link(path, target)
    shutil.copy2(weights, os.path.join(run_root, "models", "model.pt"))


def make_work(out: str) -> str:
    """The run's work folder beside ``out``: ``.<out>.<pid>.XXXX``, holding :data:`OWNER_FILE` (the host), so a later
    run can tell an abandoned one (its process is gone) from a live one."""
    work = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.{os.getpid()}.", dir=os.path.dirname(out))
    with open(os.path.join(work, OWNER_FILE), "w", encoding="utf-8") as f:
        json.dump({"host": socket.gethostname(), "pid": os.getpid()}, f)
    return work


def _pid_alive(pid: int) -> bool:
    if os.name != "posix" or pid < 1:
        return True  # cannot tell: keep the folder
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a killed process not yet reaped is gone too
    except (OSError, IndexError):
        return True


def remove_stale_work(out: str) -> None:
    """Remove the work folders beside ``out`` of earlier runs whose process is gone (SIGKILL, power loss). Folders of
    live runs, and of runs on other hosts sharing the folder, are kept."""
    parent, name = os.path.split(out)
    pattern = re.compile(re.escape(f".{name}.") + r"(\d+)\.[a-z0-9_]+")
    for entry in sorted(os.listdir(parent)):
        match, path = pattern.fullmatch(entry), os.path.join(parent, entry)
        if match is None or os.path.islink(path) or not os.path.isdir(path):
            continue
        try:
            with open(os.path.join(path, OWNER_FILE), encoding="utf-8") as f:
                host = json.load(f).get("host")
        except (OSError, ValueError, AttributeError):
            host = None  # killed before it wrote its owner: the pid in the name is all there is
        pid = int(match.group(1))
        if (host is not None and host != socket.gethostname()) or _pid_alive(pid):
            continue
        logger.info("removing %s, left behind by an earlier compress-bundle run (process %d is gone)", path, pid)
        shutil.rmtree(path, ignore_errors=True)


class Terminated(BaseException):
    """SIGTERM arrived during :func:`compress_bundle`. Like ``KeyboardInterrupt`` it is no ``Exception``, so
    ``except Exception`` clauses let it through and every ``finally`` on the way removes unfinished work."""


class SigtermGuard:
    """The SIGTERM handler of one :func:`compress_bundle` run. Outside ignite engines it raises :class:`Terminated`;
    while engines run (:meth:`running`) it stops them with ignite's own ``terminate`` at their next iteration, because
    an exception raised through them is logged with a traceback by the bundle's ``StatsHandler``, and
    :class:`Terminated` is raised once they returned."""

    def __init__(self) -> None:
        self.received = False
        self.engines: List[Any] = []

    def __call__(self, signum: int, frame: Any) -> None:
        self.received = True
        if not self.engines:
            raise Terminated()
        for engine in self.engines:
            engine.terminate(skip_completed=True)

    def _stop_if_received(self, engine: Any) -> None:
        if self.received:  # an engine started after the signal (e.g. the trainer's validation) stops at once
            engine.terminate(skip_completed=True)

    @contextlib.contextmanager
    def running(self, *engines: Any):
        from ignite.engine import Events

        for engine in engines:
            engine.add_event_handler(Events.STARTED, self._stop_if_received)
        self.engines = list(engines)
        try:
            yield
        finally:
            self.engines = []
            for engine in engines:
                engine.remove_event_handler(self._stop_if_received, Events.STARTED)
        if self.received:
            raise Terminated()


@contextlib.contextmanager
def sigterm_unwinds(out: str):
    """While the body runs, SIGTERM unwinds it (:class:`SigtermGuard`, yielded) instead of killing the process
    outright, so the unfinished work is removed; then the process exits with code 128 + SIGTERM (as the default action
    reports it) and one line on stderr. Only in the main thread, and only where SIGTERM has its default action (an
    application's own handler is left alone); the default is restored after."""
    guard = SigtermGuard()
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield guard
        return
    signal.signal(signal.SIGTERM, guard)
    try:
        yield guard
    except Terminated:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if guard.received:
        done = (f"{out} was written before the signal" if os.path.isdir(out) else
                f"removed the unfinished work, nothing was written to {out}")
        print(f"monai-prune compress-bundle: terminated by SIGTERM: {done}", file=sys.stderr, flush=True)
        raise SystemExit(128 + signal.SIGTERM)
