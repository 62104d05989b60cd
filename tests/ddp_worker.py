"""One rank of the DDP test (run by tests/test_ddp.py through torchrun): trains a small UNet wrapped in
DistributedDataParallel (gloo, CPU) with PruningHandler, each rank on different data, and writes what it ended
with (plan, shapes, weights, masks digests) to ``<out>/rank<k>.json``."""

import hashlib
import json
import os
import sys

import torch
import torch.distributed as dist
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import ValidationHandler
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler

from monai_prune.handlers import PruningHandler
from monai_prune.schedules import LinearSchedule


def digest(tensors):
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def loader(seed, n=8):
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        label = (torch.rand(1, 24, 24, 24, generator=g) > 0.7).float()
        items.append({"image": label + 0.3 * torch.randn(1, 24, 24, 24, generator=g), "label": label})
    dataset = Dataset(items)
    return DataLoader(dataset, batch_size=2, sampler=DistributedSampler(dataset, shuffle=True, seed=seed))


def run(method, out):
    rank = dist.get_rank()
    torch.manual_seed(100 + rank)  # different initial weights: DDP broadcasts rank 0's at construction
    net = UNet(3, 1, 2, (8, 16, 32), (2, 2), num_res_units=1)
    ddp = DistributedDataParallel(net)
    opt = torch.optim.Adam(ddp.parameters(), lr=1e-3)
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=3, train_data_loader=loader(0), network=ddp,
                                optimizer=opt, loss_function=DiceCELoss(to_onehot_y=True, softmax=True))
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=loader(1, n=4), network=ddp)
    ValidationHandler(interval=1, validator=evaluator, epoch_level=True).attach(trainer)
    handler = PruningHandler(network=ddp, optimizer=opt, method=method, importance="taylor",
                             example_input=torch.zeros(1, 1, 24, 24, 24),
                             schedule=LinearSchedule(final=0.5, start_epoch=1, end_epoch=2))
    handler.attach(trainer)
    trainer.run()
    state = {k: v for k, v in net.state_dict().items() if v.is_floating_point()}
    result = {
        "rank": rank,
        "shapes": {k: list(v.shape) for k, v in net.state_dict().items()},
        "weights": digest({k: v for k, v in state.items() if "running" not in k}),
        "plan": handler.plan.checksum if handler.plan else None,
        "masks": digest({k: v.float() for k, v in handler.masks.items()}) if handler.masks else None,
        "sparsity": trainer.state.metrics["prune_sparsity"],
        "macs": trainer.state.metrics["prune_macs"],
        "macs_ratio": trainer.state.metrics["prune_macs_ratio"],
        "iterations": trainer.state.iteration,
        "ddp_params_are_module_params": {id(p) for p in ddp.parameters()} == {id(p) for p in net.parameters()},
        "optimizer_params_are_module_params": {id(p) for g in opt.param_groups for p in g["params"]}
        == {id(p) for p in net.parameters()},
    }
    with open(os.path.join(out, f"{method}-rank{rank}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    dist.init_process_group("gloo")
    try:
        for method in sys.argv[2:]:
            run(method, sys.argv[1])
    finally:
        dist.destroy_process_group()
