"""One training process of ``test_kill_resume.py``: a tiny 2D UNet trained by a stock MONAI ``SupervisedTrainer``,
pruned on an epoch schedule by ``PruningHandler``, checkpointed after every epoch by MONAI's ``CheckpointSaver``
(trainer, network, optimizer and the pruning handler's state), resumed by ``CheckpointLoader`` from the newest
checkpoint in ``<out>/ckpt`` when one exists.

    python kill_resume_worker.py OUT [--hold-at-iteration N]

``--hold-at-iteration N``: after iteration N, write ``<out>/reached_iteration_N`` and wait there (up to a minute) so
that the test can SIGKILL the process at a known point mid-epoch. At the end it writes ``<out>/result.json``: parameter
shapes, the plan's kept channels, sparsity, the epochs this process ran and a digest of the final weights.
"""

import argparse
import glob
import hashlib
import json
import os
import re
import sys
import time

import numpy as np
import torch

EPOCHS = 6
SCHEDULE = {"final": 0.5, "start_epoch": 1, "end_epoch": 4}  # linear: 1/6, 1/3, 1/2 at epochs 2, 3, 4
EXAMPLE = torch.zeros(1, 1, 32, 32)


def _data():
    from monai.data import create_test_image_2d

    items = []
    for i in range(8):
        image, label = create_test_image_2d(32, 32, num_objs=3, rad_max=8, rad_min=3, noise_max=0.2,
                                            num_seg_classes=1, random_state=np.random.RandomState(i))
        items.append({"image": torch.as_tensor(image)[None].float(), "label": torch.as_tensor(label)[None].float()})
    return items


def _latest_checkpoint(folder):
    """The checkpoint of the highest epoch in ``folder`` (CheckpointSaver writes ``checkpoint_epoch=N.pt``
    atomically: a killed process leaves no half-written file under that name)."""
    found = [(int(re.search(r"epoch=(\d+)", p).group(1)), p) for p in glob.glob(os.path.join(folder, "*epoch=*.pt"))]
    return max(found)[1] if found else None


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--hold-at-iteration", type=int, default=None)
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    from ignite.engine import Events
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedTrainer
    from monai.handlers import CheckpointLoader, CheckpointSaver
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet
    from monai.utils import set_determinism

    from monai_prune.handlers import PruningHandler
    from monai_prune.schedules import LinearSchedule

    set_determinism(seed=0)
    out, ckpt_dir = args.out, os.path.join(args.out, "ckpt")
    os.makedirs(ckpt_dir, exist_ok=True)
    resume_from = _latest_checkpoint(ckpt_dir)

    net = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1,
               norm="batch")
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    loader = DataLoader(Dataset(_data()), batch_size=2, shuffle=False, num_workers=0)
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=EPOCHS, train_data_loader=loader, network=net,
                                optimizer=opt, loss_function=DiceCELoss(to_onehot_y=True, softmax=True))
    pruner = PruningHandler(network=net, optimizer=opt, method="channel", schedule=LinearSchedule(**SCHEDULE),
                            example_input=EXAMPLE, plan_path=os.path.join(out, "plan.json"))
    pruner.attach(trainer)  # before the saver: an epoch's checkpoint holds that epoch's pruning step
    # the pruner first: its state rebuilds the pruned architecture (and the optimizer's groups) before the weights load
    objects = {"pruner": pruner, "model": net, "optimizer": opt, "trainer": trainer}
    if resume_from is not None:
        CheckpointLoader(resume_from, objects, map_location="cpu").attach(trainer)
    CheckpointSaver(ckpt_dir, objects, save_interval=1, epoch_level=True, n_saved=None).attach(trainer)

    epochs_run, losses = [], []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs_run.append(e.state.epoch))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output[0]["loss"])))
    if args.hold_at_iteration is not None:
        def hold(engine):
            with open(os.path.join(out, f"reached_iteration_{engine.state.iteration}"), "w") as f:
                f.write(str(os.getpid()))
            time.sleep(60)  # the test kills the process here; carrying on would only make the test fail

        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=args.hold_at_iteration), hold)
    trainer.run()

    digest = hashlib.sha256()
    for key, value in sorted(net.state_dict().items()):
        digest.update(key.encode() + value.detach().contiguous().numpy().tobytes())
    result = {
        "resumed_from": os.path.basename(resume_from) if resume_from else None,
        "epochs_run": epochs_run,
        "final_epoch": trainer.state.epoch,
        "shapes": {k: list(v.shape) for k, v in net.state_dict().items()},
        "kept": [step["kept"] for step in pruner.plan.steps],
        "achieved": pruner.achieved,
        "prune_sparsity": pruner.measure()["prune_sparsity"],
        "prune_params": pruner.measure()["prune_params"],
        "last_loss": losses[-1] if losses else None,
        "weights_sha256": digest.hexdigest(),
    }
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
