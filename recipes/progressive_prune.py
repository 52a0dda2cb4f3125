"""Progressive channel reduction: prune a fraction of channels → fine-tune (distilling from the teacher) → evaluate,
until the FLOPs or parameter target; one row per step.

    python recipes/progressive_prune.py --dataset imagefolder --data-dir ../shared/data/cifar10 \
        --teacher runs/teacher_c10/teacher.pt --budget 0.25 --step-ratio 0.2 --importance l1 --epochs 2 --max-drop 5

Steps are scored on a validation split held out from the training images (``--val-size``); the kept model is then
scored once on the test split. Each step's fine-tuning is a training stage like every recipe's (all shared options
apply; checkpoints, metrics.csv and curves.png in OUT/step<N>_train). Writes OUT/student.pt (pickle-free),
OUT/steps.md, OUT/report.json, OUT/config.json.
"""
from __future__ import annotations

import recipes.plumbing.signals  # noqa: F401,I001 (first: Ctrl-C while torch loads is one line)
import dataclasses
from dataclasses import dataclass

import torch

from torch import nn

from kd.data import BatchIterator
from kd.losses import CrossEntropy
from kd.sweep import validation_split
from models import save_model
from models.checkpoint import atomic_write_text
from pruning.importance import IMPORTANCES
from pruning.progressive import STEP_HEADER, ProgressiveResult, progressive_prune
from recipes.plumbing import lock
from recipes.plumbing.config import (
    BUDGET, COUNT, KDConfig, Limit, NON_NEGATIVE, POSITIVE, VAL_SIZE, arg, parse_config, resolve_device,
)
from recipes.plumbing.errors import run_main
from recipes.plumbing.report import ModelReport
from recipes.plumbing.run import finish_run, start_kd_run
from recipes.plumbing.teachers import check_single_teacher
from recipes.plumbing.training import fit_stage, score


@dataclass
class ProgressiveConfig(KDConfig):
    budget: float = arg(0.25, "FLOPs target as a fraction of the teacher's FLOPs", limit=BUDGET)
    target_flops: int | None = arg(None, "FLOPs target in thop MACs (overrides --budget)", limit=COUNT)
    target_params: int | None = arg(None, "parameter-count target instead of a FLOPs target", limit=COUNT)
    step_ratio: float = arg(0.2, "fraction of each layer's channels removed per step",
                            limit=Limit(lambda v: 0.0 < v < 1.0, "in (0, 1)"))
    num_steps: int | None = arg(None, "instead of --step-ratio: reach the target in this many even FLOPs steps",
                                limit=COUNT)
    importance: str = arg("l1", f"channel importance (pruning.importance): {', '.join(IMPORTANCES)}; l1 is the "
                          "filter L1 norm, activation the mean |activation| over calibration batches",
                          tuple(IMPORTANCES))
    epochs: int = arg(2, "fine-tuning epochs after each pruning step", limit=COUNT)
    lr: float = arg(0.01, "fine-tuning learning rate (smaller than training from scratch)", limit=POSITIVE)
    distill: bool = arg(True, "distil from the teacher while fine-tuning (--no-distill: cross-entropy)")
    max_drop: float | None = arg(None, "stop when validation accuracy falls more than this many points",
                                 limit=NON_NEGATIVE)
    max_steps: int = arg(20, "at most this many steps", limit=COUNT)
    val_size: float = arg(0.1, "fraction of the training images held out to score the steps", limit=VAL_SIZE)
    calibration_batches: int = arg(4, "training batches for the activation importance", limit=COUNT)
    out: str = arg("runs/progressive", "output folder")


@lock.releasing
def main(argv: list[str] | None = None) -> ProgressiveResult:
    cfg = parse_config(ProgressiveConfig, argv, description=__doc__.split("\n")[0])
    device = resolve_device(cfg.device)
    check_single_teacher(cfg, "progressive_prune.py")
    run = start_kd_run(cfg)
    data, out, teacher, teacher_report = run.data, run.out, run.teacher, run.teacher_report
    fit, val, _ = validation_split(data.train, cfg.val_size, cfg.seed)
    norm = {"mean": data.mean, "std": data.std, "device": device}
    train_batches = BatchIterator(fit, cfg.batch_size, train=True, seed=cfg.seed, pad=cfg.pad, flip=cfg.flip,
                                  pad_mode=cfg.pad_mode, cutout=cfg.cutout, **norm)
    calibration = [b for _, b in zip(range(cfg.calibration_batches),
                                     BatchIterator(fit, cfg.batch_size, train=True, seed=cfg.seed + 1, **norm))]
    target = {"target_params": cfg.target_params} if cfg.target_params is not None else \
        {"target_flops": cfg.target_flops or int(cfg.budget * teacher_report.flops)}
    print(f"{len(fit)} training / {len(val)} validation / {len(data.test)} test images; target {target}")
    print(STEP_HEADER)
    steps = iter(range(1, cfg.max_steps + 1))

    def fine_tune(model: nn.Module) -> None:  # each step trains as every recipe stage does, in OUT/step<N>_train
        fit_stage(model, cfg, train_batches, out_dir=out / f"step{next(steps)}_train", teacher=teacher,
                  loss=run.loss if cfg.distill else CrossEntropy())

    result = progressive_prune(
        teacher, torch.zeros(data.input_size), fine_tune, BatchIterator(val, 2 * cfg.batch_size, train=False, **norm),
        step_ratio=cfg.step_ratio, num_steps=cfg.num_steps, importance=cfg.importance, calibration=calibration,
        max_drop=cfg.max_drop, max_steps=cfg.max_steps, device=device,
        on_step=lambda rec: print(rec.row(), flush=True), **target)
    status = "meets the target" if result.met_target else "does NOT meet the target"
    print(f"\nkept step {result.chosen} ({status}{', stopped early by --max-drop' if result.stopped_early else ''})")
    test = BatchIterator(data.test, 2 * cfg.batch_size, train=False, **norm)
    report = ModelReport.measure("student", result.model, score(result.model, test, cfg), data.input_size)
    save_model(result.model, out / "student.pt", meta={"accuracy": report.accuracy, **data.meta(),
                                                       "met_target": result.met_target})
    atomic_write_text(STEP_HEADER + "\n" + "\n".join(r.row() for r in result.steps) + "\n", out / "steps.md")
    finish_run(cfg, out, [teacher_report, report], teacher=teacher, student=result.model, input_size=data.input_size,
               extra={"steps": [dataclasses.asdict(s) for s in result.steps], "chosen_step": result.chosen,
                      "met_target": result.met_target, "stopped_early": result.stopped_early},
               data=data)
    return result


if __name__ == "__main__":
    run_main(main)
