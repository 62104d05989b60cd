"""Synthetic spheres (32^3) and a small UNet trained with stock MONAI engines: shared by the acceptance tests of
training-time compression (test_done_means) and quantization-aware training (test_qat)."""

import numpy as np
import torch
from monai.data import DataLoader, Dataset, create_test_image_3d
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import MeanDice, ValidationHandler, from_engine
from monai.inferers import SlidingWindowInferer
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from monai.transforms import Activationsd, AsDiscreted, Compose

SIZE = 32
X = torch.zeros(1, 1, SIZE, SIZE, SIZE)


def _spheres(n, seed):
    items = []
    for i in range(n):
        image, label = create_test_image_3d(SIZE, SIZE, SIZE, num_objs=4, rad_max=9, rad_min=4, noise_max=0.3,
                                           num_seg_classes=1, random_state=np.random.RandomState(seed + i))
        items.append({"image": torch.as_tensor(image)[None].float(), "label": torch.as_tensor(label)[None].float()})
    return items


TRAIN, VAL = _spheres(8, 0), _spheres(4, 100)


def unet():
    return UNet(3, 1, 2, (16, 32, 64, 128), (2, 2, 2), num_res_units=2, norm="batch")


def _post():
    return Compose([Activationsd("pred", softmax=True),
                    AsDiscreted(("pred", "label"), argmax=(True, False), to_onehot=2)])


def engines(net, epochs, lr=3e-3, validate=True):
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=DataLoader(Dataset(VAL), batch_size=1), network=net,
        inferer=SlidingWindowInferer((SIZE, SIZE, SIZE), sw_batch_size=1), postprocessing=_post(),
        key_val_metric={"val_dice": MeanDice(include_background=False, output_transform=from_engine(["pred", "label"]))})
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=epochs, network=net, optimizer=opt,
        train_data_loader=DataLoader(Dataset(TRAIN), batch_size=2, shuffle=True),
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True))
    if validate:
        ValidationHandler(interval=1, validator=evaluator, epoch_level=True).attach(trainer)
    return trainer, evaluator, opt
