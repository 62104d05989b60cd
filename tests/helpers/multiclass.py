"""A 3-class 2D segmentation task (background, a large bright organ, small low-contrast lesions inside it) and a
small MONAI UNet trained on it in a plain torch loop: the real case where compression costs the small class its Dice
while the large class and the foreground mean hold (issue 8's per-class guardrails). Shared by the guardrail tests
and the search tests.
"""

import functools
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.networks.nets import UNet

from monai_prune.data import MULTICLASS_NAMES, synthetic_multiclass
from monai_prune.fidelity import PerClassMetrics

from .networks import small_unet

SIZE = 64
NAMES = list(MULTICLASS_NAMES)  # background, organ (large), lesion (small)
X = torch.zeros(1, 1, SIZE, SIZE)  # example input for prune_channels


def make_multiclass_data(seed: int = 0, train: int = 32, val: int = 32,
                         size: int = SIZE) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train_images, train_labels, val_images, val_labels)``: images ``(N, 1, size, size)`` float32, labels
    ``(N, 1, size, size)`` int64 class indices (:func:`monai_prune.data.synthetic_multiclass`); the validation
    cases come from a different seed."""
    x, y = synthetic_multiclass(train, size=size, seed=seed)
    vx, vy = synthetic_multiclass(val, size=size, seed=seed + 10_000)
    return x, y, vx, vy


@functools.lru_cache(maxsize=4)
def dense_model(seed: int = 0) -> Tuple[UNet, Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(model, (x, y, val_x, val_y))``: :func:`~helpers.networks.small_unet` (2D, one residual unit) trained with :func:`train` on
    :func:`make_multiclass_data` of ``seed``, its initialisation seeded and on one thread, so the same model whatever
    ran before; trained once per process and shared by the test modules, so never modify it (``prune_channels``
    prunes a copy, and a teacher in :func:`finetune_kd` is only run)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        data = make_multiclass_data(seed)
        model = train(small_unet(2, len(NAMES), num_res_units=1), data[0], data[1], seed=seed)
    finally:
        torch.set_num_threads(threads)
    return model, data


def _batches(images: torch.Tensor, labels: torch.Tensor, iterations: int, batch_size: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    for _ in range(iterations):
        idx = torch.randint(len(images), (batch_size,), generator=g)
        yield images[idx], labels[idx]


def train(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, iterations: int = 400,
          lr: float = 3e-3, seed: int = 0, batch_size: int = 8) -> torch.nn.Module:
    """Train ``model`` in place with Adam (cosine-annealed learning rate) and ``DiceCELoss(to_onehot_y=True,
    softmax=True)`` on random batches (deterministic for a given ``seed``); returns it in eval mode."""
    torch.manual_seed(seed)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=iterations)
    model.train()
    for x, y in _batches(images, labels, iterations, batch_size, seed):
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
        schedule.step()
    return model.eval()


def finetune_kd(student: torch.nn.Module, teacher: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                iterations: int = 30, lr: float = 1e-3, temperature: float = 2.0, alpha: float = 1.0, seed: int = 0,
                batch_size: int = 8, every: int = 0,
                until: Optional[Callable[[int, torch.nn.Module], bool]] = None) -> torch.nn.Module:
    """Distillation fine-tune of ``student`` in place, Adam at a constant ``lr``: ``DiceCE(student, labels) + alpha
    * T^2 * KL(softmax(teacher/T) || softmax(student/T))`` per pixel, the teacher frozen in eval mode.

    With ``until``, ``until(i, student)`` (student in eval mode) is asked after ``i`` iterations for ``i = 0, every,
    2 * every, ...`` and the fine-tune stops at the first True, so a caller can stop it the way a validation-gated
    pipeline would. Returns the student in eval mode."""
    torch.manual_seed(seed)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(student.parameters(), lr=lr)
    teacher.eval()
    batches = _batches(images, labels, iterations, batch_size, seed + 1)
    for i in range(iterations + 1):
        if until is not None and every and i % every == 0 and until(i, student.eval()):
            break
        if i == iterations:
            break
        x, y = next(batches)
        student.train()
        with torch.no_grad():
            soft = F.log_softmax(teacher(x) / temperature, dim=1)
        out = student(x)
        kd = F.kl_div(F.log_softmax(out / temperature, dim=1), soft, log_target=True, reduction="none").sum(1).mean()
        optimizer.zero_grad()
        (loss_fn(out, y) + alpha * temperature ** 2 * kd).backward()
        optimizer.step()
    return student.eval()


@torch.no_grad()
def per_class(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
              names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """:meth:`PerClassMetrics.compute` of ``model`` (put in eval mode) on ``images``/``labels``, case by case
    (Dice, HD95, volume error)."""
    model.eval()
    metrics = PerClassMetrics(names=list(names or NAMES))
    for pred, label in zip(model(images), labels):
        metrics.update(pred, label)
    return metrics.compute()


@torch.no_grad()
def dice_only(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
              names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """The Dice part of :func:`per_class` (same definition: per case, cases where a class is absent from both
    prediction and label skipped, then averaged), without HD95, for monitoring a fine-tune cheaply."""
    model.eval()
    names = list(names or NAMES)
    pred, truth = model(images).argmax(1), labels[:, 0]
    table = {}
    for c, name in enumerate(names):
        if name.lower() in ("background", "bg", "_background_"):
            continue
        a, b = pred == c, truth == c
        sums = (a.flatten(1).sum(1) + b.flatten(1).sum(1)).double()
        per_case = 2 * (a & b).flatten(1).sum(1).double() / sums
        table[name] = {"dice": float(per_case[sums > 0].mean())}
    return {"per_class": table}


def dice(result: Dict[str, Any]) -> Dict[str, float]:
    """``{class: Dice}`` of a :func:`per_class` / :func:`dice_only` result."""
    return {name: m["dice"] for name, m in result["per_class"].items()}


def drops(before: Dict[str, Any], after: Dict[str, Any]) -> Dict[str, float]:
    """``{class: Dice before - Dice after}`` (positive: the compressed model lost Dice)."""
    b, a = dice(before), dice(after)
    return {name: b[name] - a[name] for name in b}


def mean_drop(before: Dict[str, Any], after: Dict[str, Any]) -> float:
    """Drop of the mean foreground Dice (the unweighted mean over the foreground classes): the mean-only view."""
    d = drops(before, after)
    return sum(d.values()) / len(d)


def finetune_until(student: torch.nn.Module, teacher: torch.nn.Module, data: Sequence[torch.Tensor],
                   accept: Callable[[Dict[str, Any]], bool], every: int = 5, budget: int = 100,
                   **kd) -> Tuple[Optional[int], torch.nn.Module]:
    """:func:`finetune_kd` of ``student`` on ``data = (x, y, val_x, val_y)``, measuring :func:`dice_only` on the
    validation cases every ``every`` iterations and stopping at the first measurement that ``accept`` takes (a
    validation-gated fine-tune). Returns ``(iterations, student)``; iterations is None when ``budget`` ran out."""
    x, y, vx, vy = data
    stopped: Dict[str, int] = {}

    def gate(i: int, model: torch.nn.Module) -> bool:
        if accept(dice_only(model, vx, vy)):
            stopped["at"] = i
            return True
        return False

    finetune_kd(student, teacher, x, y, iterations=budget, every=every, until=gate, **kd)
    return stopped.get("at"), student
