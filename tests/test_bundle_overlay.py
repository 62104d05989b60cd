"""The packaged recipes overlaid on an unmodified, model-zoo-shaped bundle, run by the stock ``monai.bundle`` CLI.

A model-zoo ``configs/train.json`` trains from scratch: it never loads ``models/model.pt``. The recipes load it (in
the bundle's ``initialize`` step, before the trainer and its handlers are built), so compression starts from the
trained network and distils from it. The end-to-end tests train the fixture bundle dense with the stock CLI first, so
``models/model.pt`` is a real trained checkpoint (as the bundle's own key-metric ``CheckpointSaver`` writes it)."""

import hashlib
import logging
import os
import re
import shutil

import pytest
import torch

import monai_prune as mp
from monai_prune.errors import ConfigError, InputError
from monai_prune.handlers import DistillationHandler, load_dense_weights, state_checksum, weights_state
from monai_prune.pruning import PruningPlan
from helpers.bundle_fixture import NETWORK_DEF, ROI, write_bundle, write_untrained_weights
from helpers.repo_bundles import bundle_cli

RECIPES = os.path.join(os.path.dirname(mp.__file__), "recipes")
RECIPE = os.path.join(RECIPES, "channel_pruning_kd.json")
SHAPE = f"[1,1,{ROI[0]},{ROI[1]},{ROI[2]}]"
ONE_EPOCH = ["--train#trainer#max_epochs", "1", "--prune#start_epoch", "0", "--prune#end_epoch", "0",
             "--prune#final_sparsity", "0.5"]  # a pruning step after the first epoch, not before it
DENSE_EPOCHS = 5  # 2 iterations an epoch: enough for the training loss to fall far below its first value


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _file_checksum(path):
    return state_checksum(weights_state(torch.load(path, map_location="cpu", weights_only=True)))


def _network():
    from monai.bundle import ConfigParser

    return ConfigParser({"n": NETWORK_DEF}).get_parsed_content("n")


def _losses(log):
    """[(epoch, iteration, train_loss)] from the bundle's own StatsHandler lines, in order."""
    return [(int(e), int(i), float(v)) for e, i, v in
            re.findall(r"Epoch: (\d+)/\d+, Iter: (\d+)/\d+ -- train_loss: ([0-9.eE+-]+)", log)]


def _overlay(root, recipe, *args):
    """The stock CLI on ``['configs/train.json', recipe]`` from the bundle root (offline); returns the log."""
    return bundle_cli(root, "run", "--config_file", f"['{root}/configs/train.json','{recipe}']", "--bundle_root", root,
                      "--logging_file", f"{root}/configs/logging.conf", "--meta_file", f"{root}/configs/metadata.json",
                      "--prune#input_shape", SHAPE, *args)


# ---------------------------------------------------------------------------------------------- load_dense_weights


class NotWeights:  # unpickling it imports and calls code: torch.load(weights_only=True) refuses it
    pass



def test_load_dense_weights_reads_a_state_dict_or_a_checkpoint_dict_weights_only(tmp_path, caplog):
    trained = _network()
    for p in trained.parameters():
        torch.nn.init.normal_(p)
    plain, wrapped = str(tmp_path / "plain.pt"), str(tmp_path / "ckpt.pt")
    torch.save(trained.state_dict(), plain)
    torch.save({"model": trained.state_dict(), "epoch": 3}, wrapped)  # as CheckpointSaver writes several objects
    for path in (plain, wrapped):
        net = _network()
        assert state_checksum(net) != state_checksum(trained)
        with caplog.at_level(logging.INFO, logger="monai_prune"):
            assert load_dense_weights(net, path) is net
        assert state_checksum(net) == state_checksum(trained) == _file_checksum(path)
        assert f"loaded the trained dense weights from {path} (" in caplog.text
        assert state_checksum(trained)[:16] in caplog.text

    torch.save({"model": NotWeights()}, str(tmp_path / "code.pt"))
    with pytest.raises(InputError, match="weights_only=True"):
        load_dense_weights(_network(), str(tmp_path / "code.pt"))
    torch.save({"sentinel": torch.ones(3)}, str(tmp_path / "other.pt"))
    with pytest.raises(ConfigError, match="does not fit the bundle's network"):
        load_dense_weights(_network(), str(tmp_path / "other.pt"))


def test_load_dense_weights_warns_and_keeps_the_initial_weights_without_a_file(tmp_path, caplog):
    net = _network()
    before = state_checksum(net)
    missing = str(tmp_path / "models" / "model.pt")
    with caplog.at_level(logging.INFO, logger="monai_prune"):
        assert load_dense_weights(net, missing) is net
    assert state_checksum(net) == before
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warned] == [
        f"no trained weights at {missing}: pruning starts from the network's initial weights"]


@pytest.mark.parametrize("recipe", ["channel_pruning", "channel_pruning_kd", "magnitude_sparsity", "qat"])
def test_every_recipe_loads_the_dense_weights_before_the_trainer_and_its_handlers_exist(tmp_path, recipe):
    """As ``monai.bundle run`` does: ``initialize`` (which loads), then ``run`` builds the trainer on the same,
    already loaded, network object; a teacher copied at handler construction is the trained model too."""
    from monai.bundle import ConfigWorkflow

    root = write_bundle(str(tmp_path / "b"), volumes=3)
    weights = write_untrained_weights(root, seed=1)  # a known state, different from the fresh init below
    expected = _file_checksum(weights)
    overrides = {"prune#end_epoch": 2} if recipe != "qat" else {}  # the fixture trains 4 epochs
    if recipe.startswith("channel"):
        overrides["prune#input_shape"] = [1, 1, *ROI]
    workflow = ConfigWorkflow(config_file=[f"{root}/configs/train.json", os.path.join(RECIPES, f"{recipe}.json")],
                              meta_file=f"{root}/configs/metadata.json", logging_file=False, bundle_root=root,
                              **overrides)
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert state_checksum(trainer.network) == expected
    assert workflow.parser.get_parsed_content("optimizer").param_groups[0]["params"][0] is \
        next(trainer.network.parameters())
    handlers = workflow.parser.get_parsed_content("train#handlers")
    for handler in handlers:
        if isinstance(handler, DistillationHandler):
            assert state_checksum(handler.teacher) == expected


# ---------------------------------------------------------------------------------------------- stock CLI, end to end


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The fixture bundle trained dense from scratch by the stock CLI: its key-metric CheckpointSaver writes
    models/model.pt. Returns the bundle root, the first iteration's loss (random init) and the trained loss (the
    mean of the last epoch's iterations)."""
    root = write_bundle(str(tmp_path_factory.mktemp("dense") / "spleen_tiny"), max_epochs=DENSE_EPOCHS)
    log = bundle_cli(root, "run", "--config_file", f"{root}/configs/train.json", "--bundle_root", root,
                     "--logging_file", f"{root}/configs/logging.conf", "--meta_file", f"{root}/configs/metadata.json")
    losses = _losses(log)
    assert losses and losses[-1][0] == DENSE_EPOCHS, log[-3000:]
    assert "trained dense weights" not in log  # the stock train.json never loads models/model.pt
    scratch = losses[0][2]
    last = [v for e, _, v in losses if e == DENSE_EPOCHS]
    trained_loss = sum(last) / len(last)
    assert scratch - trained_loss > 0.3, losses  # training made a real difference, else the test proves nothing
    assert os.path.isfile(os.path.join(root, "models", "model.pt"))
    return {"root": root, "scratch": scratch, "trained": trained_loss, "losses": losses}


def _copy(trained, tmp_path, weights=True):
    root = str(tmp_path / "bundle")
    shutil.copytree(trained["root"], root, ignore=shutil.ignore_patterns("compressed", "eval", "__pycache__"))
    if not weights:
        os.remove(os.path.join(root, "models", "model.pt"))
    return root


@pytest.mark.slow
def test_overlay_fine_tunes_the_trained_network_not_a_random_one(trained, tmp_path):
    root = _copy(trained, tmp_path)
    dense_path = os.path.join(root, "models", "model.pt")
    before = _sha(dense_path)
    log = _overlay(root, os.path.join(RECIPES, "channel_pruning.json"), *ONE_EPOCH)

    # (a) one line naming the file loaded, with the checksum of what it holds
    loaded = [line for line in log.splitlines() if "loaded the trained dense weights from" in line]
    assert len(loaded) == 1, log[-4000:]
    assert f"from {dense_path} (" in loaded[0] and _file_checksum(dense_path)[:16] in loaded[0], loaded
    assert "no trained weights" not in log
    # (b) the first iteration's loss is the trained model's, far below a from-scratch start
    first = _losses(log)[0][2]
    scratch, trained_loss = trained["scratch"], trained["trained"]
    print(f"losses: from scratch {scratch:.4f}, trained (last dense epoch) {trained_loss:.4f}, overlay first "
          f"{first:.4f}")
    assert first < trained_loss + 0.4 * (scratch - trained_loss), (scratch, trained_loss, first)
    assert _sha(dense_path) == before  # read, never written


@pytest.mark.slow
def test_overlay_without_trained_weights_warns_and_trains_from_the_initial_weights(trained, tmp_path):
    root = _copy(trained, tmp_path, weights=False)
    dense_path = os.path.join(root, "models", "model.pt")
    log = _overlay(root, os.path.join(RECIPES, "channel_pruning.json"), *ONE_EPOCH)
    warning = f"WARNING - no trained weights at {dense_path}: pruning starts from the network's initial weights"
    assert warning in log, log[-4000:]
    assert "loaded the trained dense weights" not in log
    losses = _losses(log)
    assert len(losses) == 2 and "epoch 1: pruning step to 0.500" in log  # the epoch ran to its end, then pruned
    scratch, trained_loss = trained["scratch"], trained["trained"]
    print(f"losses: from scratch {scratch:.4f}, overlay without model.pt first {losses[0][2]:.4f}")
    assert losses[0][2] > trained_loss + 0.6 * (scratch - trained_loss), (scratch, trained_loss, losses[0][2])
    assert not os.path.exists(dense_path)  # the fine-tuned checkpoints went to models/compressed


@pytest.mark.slow
def test_recipe_overlay_prunes_and_distils_from_the_trained_model_inside_the_stock_bundle_run(trained, tmp_path):
    root = _copy(trained, tmp_path)
    dense_path = os.path.join(root, "models", "model.pt")
    before = {p: _sha(p) for p in (dense_path, os.path.join(root, "configs", "train.json"))}
    expected = _file_checksum(dense_path)

    log = _overlay(root, RECIPE, "--train#trainer#max_epochs", "2", "--prune#start_epoch", "0",
                   "--prune#end_epoch", "1", "--prune#final_sparsity", "0.5")

    # (a) the trained weights were loaded, (c) the teacher is exactly them (same state checksum), not a random copy
    assert f"loaded the trained dense weights from {dense_path} (80 tensors, sha256 {expected[:16]})" in log, \
        log[-4000:]
    teacher = [line for line in log.splitlines() if "distillation teacher:" in line]
    assert len(teacher) == 1 and f"sha256 {expected[:16]})" in teacher[0], teacher
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
