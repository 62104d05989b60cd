"""``monai-prune`` command line: demo, prune, measure, recipes, compress-bundle, deploy run, package.

Errors of the user's making (a bad ratio, a missing file, a plan that does not fit) are printed as one line on
stderr with exit code 2, never a traceback.

The package: :func:`main` and :func:`make_parser` here, with the network helpers the commands share
(``load_network_def``, ``build_network``, ``load_weights``, ``load_weights_into``); the commands and their arguments
in :mod:`.prune_commands` (prune, measure), :mod:`.bundle_commands` (recipes, compress-bundle),
:mod:`.deploy_commands` (deploy run, serve, tune-pipeline, time-pipeline, package) and :mod:`.search_commands` (demo,
search, report); :mod:`.common` holds the ``--input-shape`` type and :func:`our_error`.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
import warnings
from typing import TYPE_CHECKING, List, Optional

# torch, MONAI and the heavy parts of monai_prune are imported inside the subcommands that use them, so that
# `monai-prune --help`, `monai-prune <command> --help` and argument errors answer at once (no torch import)
from ..errors import InputError, MonaiPruneError
from . import bundle_commands, deploy_commands, prune_commands, search_commands
from .bundle_commands import check_recipe_overrides  # noqa: F401  (public here since cli.py)
from .common import our_error
from .deploy_commands import app_script  # noqa: F401  (public here since cli.py)

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("monai_prune.cli")


def _first_line(error: BaseException) -> str:
    """The first non-empty line of an error message (torch's and MONAI's run over several lines)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def load_network_def(text: str) -> dict:
    """A network constructor in MONAI bundle syntax, given inline as JSON or as a .json/.yaml file."""
    if os.path.exists(text):
        from monai.bundle import ConfigParser

        try:
            data = ConfigParser.load_config_file(text)
        except Exception as e:  # json/yaml parse errors, an unknown extension, an unreadable file
            raise InputError(f"--network file {text} is not valid JSON/YAML ({_first_line(e)}); expected an object "
                             'like {"_target_": "monai.networks.nets.UNet", ...}') from e
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"--network must be a JSON object or a file path; {text!r} is neither ({e})") from e
    if isinstance(data, dict) and "_target_" not in data and isinstance(data.get("network_def"), dict):
        data = data["network_def"]
    if not isinstance(data, dict) or "_target_" not in data:
        raise InputError('--network needs a "_target_", e.g. {"_target_": "monai.networks.nets.UNet", ...}; got '
                         + (f"a JSON {type(data).__name__}" if not isinstance(data, dict) else
                            f"an object with keys {sorted(data)}"))
    return data


def build_network(network_def: dict) -> torch.nn.Module:
    from monai.bundle import ConfigParser

    try:
        return ConfigParser({"net": network_def}).get_parsed_content("net")
    except Exception as e:
        cause = e.__cause__ if e.__cause__ is not None else e  # MONAI wraps the constructor's error
        raise InputError(f"could not build the network from {network_def.get('_target_')}: {_first_line(cause)}") from e


def load_weights(path: str) -> dict:
    """A state dict (or a MONAI CheckpointSaver file holding one under "model"), loaded with weights_only=True."""
    from ..weights import read_state_dict

    return read_state_dict(path)


def load_weights_into(model: torch.nn.Module, state: dict, path: str) -> None:
    """``model.load_state_dict(state)``, with torch's many-line mismatch report turned into one sentence."""
    own = model.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise InputError(f"weights {path} do not fit the network: {key} has shape {list(value.shape)} in the file "
                             f"but {list(own[key].shape)} in the network (first mismatch); check --network")
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise InputError(f"weights {path} do not fit the network: " + "; ".join(
            f"{what} {len(keys)} keys (first: {keys[0]})" for what, keys in (("missing", missing),
                                                                            ("unexpected", unexpected)) if keys)
            + "; check --network")
    model.load_state_dict(state)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="monai-prune", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    search_commands.add_demo_parser(sub)
    prune_commands.add_parsers(sub)  # prune, measure
    bundle_commands.add_parsers(sub)  # recipes, compress-bundle
    deploy_commands.add_parsers(sub)  # deploy run, serve, tune-pipeline, time-pipeline, package
    search_commands.add_parsers(sub)  # search, report
    return parser


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def main(argv: Optional[List[str]] = None) -> int:
    # holoscan (pulled in by `import monai` when MONAI Deploy is installed) warns about the stack size on import; it
    # concerns its GPU apps, not this command, and would turn every one-line error into three lines
    warnings.filterwarnings("ignore", message="Current stack size", category=RuntimeWarning)
    parser = make_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    passed: List[str] = []
    if argv[:1] == ["serve"] and "--" in argv:  # serve ... -- <app options>
        cut = argv.index("--")
        argv, passed = argv[:cut], argv[cut + 1:]
    args = parser.parse_args(argv)
    if args.command == "serve":
        args.app_args = passed
    from ..utils import configure_logging  # imports torch: only once the arguments are valid

    configure_logging(logging.DEBUG if args.verbose else logging.INFO)

    def fail(message) -> int:
        print(f"monai-prune {args.command}: error: {_one_line(message)}", file=sys.stderr)
        return 2

    try:
        return args.func(args)
    except MonaiPruneError as e:
        return fail(e)
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
        return fail(e)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        where = e.filename2 or e.filename
        return fail(f"no space left on device writing {where if where else 'the output'} (nothing more was written)")
    except Exception as e:
        ours = our_error(e)
        if ours is None:
            raise
        return fail(ours)
