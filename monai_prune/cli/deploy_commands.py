"""``monai-prune deploy run``, ``serve``, ``tune-pipeline``, ``time-pipeline`` and ``package``: the MONAI Deploy apps
under ``apps/`` run once or resident, a compressed bundle's pipeline knobs measured, the whole pipeline timed against
the dense model, and an app packaged (MAP folder, Triton)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..errors import InputError

# the repository's apps/ (deploy apps by name): beside monai_prune/, two folders above this file
APPS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "apps")


def add_parsers(sub) -> None:
    """The ``deploy`` (``deploy run``), ``serve``, ``tune-pipeline``, ``time-pipeline`` and ``package`` subcommands."""
    _add_deploy_parser(sub)
    _add_serve_parser(sub)
    _add_tune_parser(sub)
    _add_time_parser(sub)
    _add_package_parser(sub)


def _add_deploy_parser(sub) -> None:
    deploy = sub.add_parser("deploy", help="MONAI Deploy apps for compressed bundles")
    deploy_sub = deploy.add_subparsers(dest="deploy_command", required=True)
    run = deploy_sub.add_parser("run", help="run a deploy app locally: deploy run APP -i DICOM_DIR -o OUT -m BUNDLE",
                                description="Runs the app's app.py with the remaining arguments (-i, -o, -m, --backend "
                                            "auto|torchscript|onnxruntime|openvino, --precision auto|fp32|int8, "
                                            "--nifti); its exit code is returned.")
    run.add_argument("app", help="app folder, app.py, or a name under apps/ (ct_seg_compressed, xray_cls_compressed)")
    run.add_argument("app_args", nargs=argparse.REMAINDER, help="arguments for the app")
    run.set_defaults(func=_cmd_deploy_run)


def _add_serve_parser(sub) -> None:
    serve = sub.add_parser(
        "serve", usage="monai-prune serve APP -m BUNDLE -o OUT (--study DIR [DIR ...] | --watch INBOX) [options] "
                       "[-- app options]", help="resident mode: run a deploy app on study after study in one process (imports and model "
                      "loaded once)",
        description="Runs APP on each --study folder, then on each study folder that appears in --watch (ready when "
                    "it holds a .ready file or stayed unchanged for --settle seconds), in one process: imports and "
                    "the loaded model are paid for the first study only. Results go to OUT/<study folder name>/, "
                    "one line per study to OUT/serve.jsonl. Options after -- go to the app (e.g. -- --backend "
                    "openvino --precision int8). SIGTERM/Ctrl-C: the current study finishes, then it exits.")
    serve.add_argument("app", help="app folder, app.py, or a name under apps/ (ct_seg_compressed, xray_cls_compressed)")
    serve.add_argument("-m", "--model", required=True, help="the compressed bundle")
    serve.add_argument("-o", "--output", required=True, help="output root: one result folder per study")
    serve.add_argument("--study", nargs="+", help="study folders (DICOM) to process, in order")
    serve.add_argument("--watch", help="inbox folder: every study folder that appears in it is processed")
    serve.add_argument("--settle", type=float, default=5.0, help="seconds a watched study must stay unchanged "
                                                                  "(default 5; a .ready file skips the wait)")
    serve.add_argument("--poll", type=float, default=1.0, help="seconds between looks at the inbox (default 1)")
    serve.add_argument("--max-studies", type=int, default=None, help="stop after this many studies")
    serve.add_argument("--idle-exit", type=float, default=None,
                       help="with --watch: stop after this many seconds without a new study")
    serve.set_defaults(func=_cmd_serve)


def _add_tune_parser(sub) -> None:
    tune = sub.add_parser(
        "tune-pipeline", help="measure sliding-window overlap, sw_batch_size, roi and inference resolution of a "
                              "compressed bundle: per-class Dice and end-to-end seconds",
        description="Runs the bundle's own preprocessing, inferer and postprocessing (configs/inference.json, "
                    "checked against its sha256; SaveImage left out) on --images at its own setting and with one "
                    "knob changed at a time, then the passing knobs combined. Each setting: end-to-end seconds "
                    "per image, per-class Dice against the reference labels (--dense, else the compressed model at "
                    "the bundle's setting) and ΔDice against the baseline; it passes when every class keeps "
                    "ΔDice >= -max-delta. Prints a Markdown table and the --set overrides that ship each passing "
                    "setting.")
    tune.add_argument("bundle", help="the compressed bundle folder")
    tune.add_argument("--images", nargs="+", required=True, help="image files (or DICOM series folders) to run on")
    tune.add_argument("--dense", help="dense reference: a TorchScript file (ckpt_export) or a bundle folder")
    tune.add_argument("--backend", default="auto", choices=["auto", "torchscript", "onnxruntime", "openvino"])
    tune.add_argument("--precision", default="auto", choices=["auto", "fp32", "int8"])
    tune.add_argument("--overlap", nargs="+", metavar="F", help="sliding-window overlaps, e.g. 0.5 0.25 0.1")
    tune.add_argument("--sw-batch-size", dest="sw_batch_size", nargs="+", metavar="N", help="e.g. 1 2 4")
    tune.add_argument("--roi", nargs="+", metavar="X,Y,Z", help="window sizes, e.g. 96,96,96 64,64,64")
    tune.add_argument("--pixdim", nargs="+", metavar="X,Y,Z", help="inference spacings in mm, e.g. 1.5,1.5,2 2,2,2")
    tune.add_argument("--max-delta", dest="max_delta", type=float, default=0.01,
                      help="largest per-class Dice drop against the baseline (default 0.01)")
    tune.add_argument("--repeats", type=int, default=1, help="timed runs per image and setting (median; default 1)")
    tune.add_argument("--min-saving", dest="min_saving", type=float, default=5.0, metavar="PCT",
                      help="--write-bundle ships a setting only if it saved more than PCT percent (default 5: less "
                           "is within the timing noise of a shared machine)")
    tune.add_argument("--json", help="also write the rows to this JSON file")
    tune.add_argument("--write-bundle", dest="write_bundle", metavar="OUT",
                      help="write a copy of the bundle whose inference config (and model.ts) runs the passing "
                           "setting that saves most (the combined row when it passed), with the measurements in its "
                           "metadata and fidelity card; the source bundle is never changed")
    tune.set_defaults(func=_cmd_tune_pipeline)


def _add_time_parser(sub) -> None:
    timing = sub.add_parser(
        "time-pipeline", help="time the whole DICOM -> SEG pipeline, dense vs compressed, end to end and per stage, "
                              "with the compressed SEG's per-class Dice against the dense SEG",
        description="Runs the deploy app on every --series: before = the dense model (--dense) through the SDK's "
                    "stock operator, one app process per study (launch to exit); after = the compressed BUNDLE "
                    "through monai-prune's operator at --backend/--precision, one app process per study or, with "
                    "--resident, one `monai-prune serve` process (first study = launch to SEG, steady state = the "
                    "later studies). One untimed warm-up, then --rounds interleaved rounds; medians. Seconds per "
                    "stage from each run's run.json (start-up, DICOM load, preprocessing, network, postprocessing, "
                    "SEG writing, rest of the app). Both SEGs are read back: per-class Dice of the compressed SEG vs "
                    "the dense SEG, and voxel agreement (no label needed). Prints a Markdown table; --write-bundle "
                    "writes a copy of BUNDLE whose fidelity card carries the end-to-end section (BUNDLE is never "
                    "changed).")
    timing.add_argument("bundle", help="the compressed bundle folder")
    timing.add_argument("--dense", required=True,
                        help="the dense model run today: a TorchScript file (python -m monai.bundle ckpt_export) or "
                             "a bundle folder")
    timing.add_argument("--series", nargs="+", required=True, metavar="DIR", help="DICOM series folders (studies)")
    timing.add_argument("--app", default="ct_seg_compressed",
                        help="app folder, app.py, or a name under apps/ (default ct_seg_compressed)")
    timing.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3; medians)")
    timing.add_argument("--backend", default="auto", choices=["auto", "torchscript", "onnxruntime", "openvino"])
    timing.add_argument("--precision", default="auto", choices=["auto", "fp32", "int8"])
    timing.add_argument("--resident", action="store_true",
                        help="run the compressed bundle in one `monai-prune serve` process for every study")
    timing.add_argument("--work", help="keep the runs' outputs (the SEGs --json names) and logs in this folder "
                                       "(default: a temporary one, removed)")
    timing.add_argument("--json", help="also write rows, accuracy, settings, machine and the card section here")
    timing.add_argument("--write-bundle", dest="write_bundle", metavar="OUT",
                        help="write a copy of BUNDLE at OUT (a new folder) whose docs/fidelity_card.json and .md "
                             "carry the end-to-end section")
    timing.set_defaults(func=_cmd_time_pipeline)


def _add_package_parser(sub) -> None:
    package = sub.add_parser("package", help="write a MAP-ready folder for a deploy app (+ a Triton model repository)")
    package.add_argument("app", help="app folder, app.py, or a name under apps/")
    package.add_argument("--out", required=True, help="the folder to write (must not exist)")
    package.add_argument("--model", help="the compressed bundle to ship in models/<name>/ (sha256 verified)")
    package.add_argument("--name", help="model folder name (default: the bundle folder's name)")
    package.add_argument("--cpu", type=float, default=2, help="app.yaml resources.cpu (default 2)")
    package.add_argument("--memory", default="4Gi", help="app.yaml resources.memory (default 4Gi)")
    package.add_argument("--gpu", type=int, default=0, help="app.yaml resources.gpu (default 0: CPU runtimes)")
    package.add_argument("--triton-repo", help="also add the model to this Triton model repository folder")
    package.add_argument("--triton-backend", choices=["onnxruntime", "openvino"], default="onnxruntime")
    package.add_argument("--build", action="store_true", help="build the MAP image (needs Docker, holoscan-cli<=4.2)")
    package.add_argument("--tag", help="image tag for --build, e.g. spleen-seg:1.0")
    package.set_defaults(func=_cmd_package)


def app_script(app: str) -> str:
    """``app.py`` of a deploy app: a folder or file path, or a name under the repository's ``apps/``."""
    candidates = [app, os.path.join(app, "app.py"), os.path.join(APPS_DIR, app, "app.py")]
    for candidate in candidates:
        if os.path.isfile(candidate) and candidate.endswith(".py"):
            return os.path.abspath(candidate)
    raise InputError(f"no deploy app {app!r}: give an app folder, its app.py, or one of apps/ (ct_seg_compressed, "
                     "xray_cls_compressed)")


def _cmd_deploy_run(args) -> int:
    import subprocess

    script = app_script(args.app)
    return subprocess.run([sys.executable, script, *args.app_args]).returncode


def _cmd_serve(args) -> int:
    from ..deploy.serve import serve

    summary = serve(app_script(args.app), args.model, args.output, studies=args.study or (), watch=args.watch,
                    app_args=args.app_args, settle=args.settle, poll=args.poll, max_studies=args.max_studies,
                    idle_exit=args.idle_exit)
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}))
    return 0 if summary["failed"] == 0 else 1


def _cmd_tune_pipeline(args) -> int:
    from ..deploy.pipeline_knobs import tune_pipeline
    from ..deploy.tuned_bundle import check_target, write_tuned_bundle
    from ..utils import atomic_write_text

    if args.write_bundle:
        check_target(args.bundle, args.write_bundle)
    result = tune_pipeline(args.bundle, args.images, dense=args.dense, backend=args.backend,
                           precision=args.precision, overlaps=args.overlap, sw_batch_sizes=args.sw_batch_size,
                           roi_sizes=args.roi, pixdims=args.pixdim, max_delta=args.max_delta, repeats=args.repeats)
    print(result["markdown"])
    if args.json:
        atomic_write_text(args.json, json.dumps({k: v for k, v in result.items() if k != "markdown"}, indent=2))
        print(f"wrote {args.json}")
    if args.write_bundle:
        written = write_tuned_bundle(result, args.write_bundle, min_saving_pct=args.min_saving)
        print(f"wrote {written} (its inference config runs the shipped "
              "setting; configs/metadata.json compression.pipeline_knobs says what it saved and cost)")
    return 0


def _cmd_time_pipeline(args) -> int:
    from ..deploy.time_pipeline import time_pipeline
    from ..utils import atomic_write_text

    result = time_pipeline(app_script(args.app), args.bundle, args.dense, args.series, rounds=args.rounds,
                           backend=args.backend, precision=args.precision, resident=args.resident, work=args.work,
                           write_bundle=args.write_bundle)
    print(result["markdown"])
    if args.json:
        atomic_write_text(args.json, json.dumps({k: v for k, v in result.items() if k != "markdown"}, indent=2))
        print(f"wrote {args.json}")
    return 0


def _cmd_package(args) -> int:
    from ..deploy.package import package_app

    script = app_script(args.app)
    result = package_app(os.path.dirname(script), args.out, model=args.model, name=args.name, cpu=args.cpu,
                         memory=args.memory, gpu=args.gpu, build=args.build, tag=args.tag)
    print(f"wrote {result['folder']} ({len(result['files'])} files + vendored monai_prune; "
          f"{len(result['requirements'])} pinned requirements)")
    if args.triton_repo:
        from ..deploy.models import select_model
        from ..deploy.triton import write_triton_repository

        choice = select_model(args.model, args.triton_backend, "fp32") if args.model else None
        if choice is None or not choice.path.endswith((".onnx", ".xml")):
            raise InputError("--triton-repo needs --model <compressed bundle> with models/model.onnx")
        folder = write_triton_repository(choice.path, args.triton_repo, result["model"]["name"],
                                         backend=args.triton_backend,
                                         metadata={"sha256": choice.sha256, "version": choice.version})
        print(f"wrote Triton model {folder}")
    print(result["packager"]["message"])
    if args.build and not result["build"].get("ran"):
        return 1
    return 0 if result["build"].get("returncode", 0) == 0 else 1
