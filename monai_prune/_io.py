"""Files: atomic writes that keep the user's umask, sha256 digests, strict JSON values. A leaf: no first-party
imports (every layer of monai_prune may use it)."""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "", keep_name: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on error removed.

    Readers never see a half-written file, and a failed export leaves any previous file untouched. With
    ``keep_name`` the temporary file has ``path``'s own name inside a temporary folder (TorchScript names its archive's
    root folder after the file, and MONAI Deploy looks configs up under ``<stem>/extra/``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if keep_name:
        folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        tmp_path = folder / path.name
    else:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix, dir=path.parent)
        os.close(fd)
        tmp_path, folder = Path(tmp), None
    try:
        yield tmp_path
        if tmp_path.exists():
            give_umask_mode(tmp_path)  # mkstemp creates 0600; the file must read as if created with open()
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_umask_mode(path: str | os.PathLike) -> None:
    """Set the mode a file or folder would have had if created plainly under the user's umask (``tempfile`` makes
    0600 files and 0700 folders, which a service account reading a bundle written by a build account cannot open)."""
    base = 0o777 if os.path.isdir(path) else 0o666
    os.chmod(path, base & ~current_umask())


def atomic_write_text(path: str | os.PathLike, text: str) -> str:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return str(path)


def json_safe(x: Any) -> Any:
    """nan/inf -> None, recursively (JSON has no NaN; ``metadata.json`` must stay strict JSON)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def config_digests(bundle: str) -> Dict[str, str]:
    """The sha256 of every file in ``bundle/configs/`` but ``metadata.json`` (which records them), by file name."""
    configs = os.path.join(bundle, "configs")
    return {name: sha256(os.path.join(configs, name)) for name in sorted(os.listdir(configs))
            if name != "metadata.json" and os.path.isfile(os.path.join(configs, name))}
