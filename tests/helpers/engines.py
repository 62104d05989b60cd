"""A tiny 3D segmentation trainer (stock MONAI ``SupervisedTrainer``) for the handler tests, and a log catcher."""

import logging

import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.losses import DiceCELoss

X = torch.zeros(1, 1, 32, 32, 32)


def loader(n=4):
    g = torch.Generator().manual_seed(0)
    items = []
    for _ in range(n):
        label = (torch.rand(1, 32, 32, 32, generator=g) > 0.7).float()
        items.append({"image": label + 0.3 * torch.randn(1, 32, 32, 32, generator=g), "label": label})
    return DataLoader(Dataset(items), batch_size=2)


def make_trainer(net, opt, epochs):
    return SupervisedTrainer(device=torch.device("cpu"), max_epochs=epochs, train_data_loader=loader(), network=net,
                             optimizer=opt, loss_function=DiceCELoss(to_onehot_y=True, softmax=True))


class Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())
