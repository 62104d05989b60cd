"""The packaged recipe overlaid on an unmodified, model-zoo-shaped bundle, run by the stock ``monai.bundle`` CLI."""

import hashlib
import os
import subprocess
import sys

import pytest
import torch

import monai_prune as mp
from monai_prune.pruning import PruningPlan
from bundle_fixture import ROI, write_bundle

pytestmark = pytest.mark.slow
RECIPE = os.path.join(os.path.dirname(mp.__file__), "recipes", "channel_pruning_kd.json")


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_recipe_overlay_prunes_and_distils_inside_the_stock_bundle_run(tmp_path):
    root = write_bundle(str(tmp_path / "bundle"), max_epochs=4)
    dense_path = os.path.join(root, "models", "model.pt")
    torch.save({"sentinel": torch.ones(3)}, dense_path)  # stands for the bundle's trained dense weights
    before = {p: _sha(p) for p in (dense_path, os.path.join(root, "configs", "train.json"))}

    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file",
           f"['{root}/configs/train.json','{RECIPE}']", "--bundle_root", root,
           "--logging_file", f"{root}/configs/logging.conf", "--meta_file", f"{root}/configs/metadata.json",
           "--prune#input_shape", f"[1,1,{ROI[0]},{ROI[1]},{ROI[2]}]", "--prune#start_epoch", "0",
           "--prune#end_epoch", "2", "--prune#final_sparsity", "0.5"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=root)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]

    # the bundle's own StatsHandler logged our metrics; the final epoch reached the schedule's sparsity exactly
    last = [line for line in log.splitlines() if "prune_sparsity" in line][-1]
    assert "prune_sparsity: 0.5000" in last and "prune_target: 0.5000" in last and "kd_agreement" in last, last
    assert "best-metric tracking of the evaluator restarted" in log
    # nothing of the user's was overwritten
    assert {p: _sha(p) for p in before} == before

    # the stock CheckpointSaver's "best" model is of the final architecture and loads (weights_only) via the plan
    plan = PruningPlan.load(os.path.join(root, "models", "compressed", "plan.json"))
    net = plan.build_network()
    state = torch.load(os.path.join(root, "models", "compressed", "model.pt"), weights_only=True)
    net.load_state_dict(state.get("model", state))
    x = torch.zeros(1, 1, *ROI)
    from monai.bundle import ConfigParser

    dense = ConfigParser({"n": plan.network_def}).get_parsed_content("n")
    assert mp.count_macs(net, x) < 0.5 * mp.count_macs(dense, x)
    assert net.eval()(x).shape == (1, 2, *ROI)
