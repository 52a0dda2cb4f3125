"""Prune a trained teacher to a FLOPs/params budget with Torch-Pruning, then recover accuracy by distillation.

    python recipes/prune_then_distill.py          # the lab's job: shipped CIFAR-10, committed teacher, ≤ 31,269,888
                                                  # flops, 8 fast epochs of KD
    python recipes/prune_then_distill.py --epochs 40 --out runs/seed_budget   # the seed's budget, longer
    python recipes/prune_then_distill.py --dataset imagefolder --data-dir path/to/images \
        --teacher runs/teacher/teacher.pt --target-flops 76000000 --epochs 30

Teacher (--teacher FILE; with --dataset cifar10-jpeg (the default) or cifar10 the committed one, sha256 checked;
else, or with --train-teacher, trained first for --teacher-epochs at --lr; several files teach the mean of their
logits and the first is pruned; --teacher-tta averages each view with its mirror image) → deep copy → pruned to
--target-flops, --target-params, --ratio or --budget (a fraction of the teacher's flops; with no target the lab's
flops apply at 32 px only, other image sizes are refused) by --importance (group L1 by default; the classifier keeps
its outputs) → BatchNorm statistics re-estimated on --calibration-images (--student-init scratch: then
re-initialised, Liu et al. 2019's control) → fine-tuned from the pruned weights at --finetune-lr (from --recipe:
classic 0.01, fast 0.3 per 1024 images) with --kd-loss from --recipe.
fast: kd, (1 − α) · CE_ls(s, y) + α · T² · KL(softmax(t/T) ‖ softmax(s/T)), T 4, α 0.9, label smoothing 0.2 on the CE
part: from the committed 90.88 % teacher it beat plain cross-entropy by 0.3–0.9 points in 6 of 8 cells of
BENCHMARKS.md's Δ table (½–⅛ of the flops, 2–40 epochs, 3 seeds) and trailed it by 0.11 and 1.00 (± 2.1) in the other
two. classic: kd-ls, CE(s, y) + 9 · T² · KL(softmax(Z(t)/T) ‖ softmax(Z(s)/T)), Z = per-row z-score of the logits, T
2, chosen by the CPU sweeps from 57–71 % teachers, where plain cross-entropy at its own best rate was as good or
better. --alpha 0 is plain cross-entropy.
Prints the report block of the teacher (of each teacher, then of their ensemble), of the pruned student before
fine-tuning and of the final student; writes OUT/report.json, OUT/config.json, OUT/student.pt (pickle-free:
pruning.load reads it) and OUT/student.safetensors + OUT/student.json (rebuilt with plain torch + timm or your own
class: README, "Taking the student out").
"""
from __future__ import annotations

import recipes.plumbing.signals  # noqa: F401,I001 (first: Ctrl-C while torch loads is one line)
import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

import pruning
from kd import HintLoss
from kd.data import BatchIterator, DataSplits, TransformBatchIterator, subset
from kd.data.transforms import LAB_IMAGE_SIZE, subset_source
from kd.ensemble import ensemble_members
from models import save_portable
from models.init import reinitialize
from pruning.importance import calibrated_names, needs_calibration
from recipes.plumbing import lock
from recipes.plumbing.config import (
    BUDGET, COUNT, KDConfig, Limit, NON_NEGATIVE, POSITIVE, arg, kd_loss_arg, parse_config, resolve_device,
)
from recipes.plumbing.errors import run_main
from recipes.plumbing.report import ModelReport
from recipes.plumbing.run import finish_run, start_kd_run
from recipes.plumbing.teachers import use_committed_teacher
from recipes.plumbing.training import fit_stage, init_model, loaders, score, seed_everything

LAB_TARGET_FLOPS = 31_269_888  # the lab's student budget (thop MACs of one 32×32 image)
STUDENT_INITS = ("pruned", "scratch")


@dataclass
class PruneThenDistillConfig(KDConfig):
    EPOCHS_KEY: ClassVar[str] = "finetune_epochs"  # --epochs is the student's fine-tuning: the recipe's own length
    target_flops: int | None = arg(None, f"prune the student to at most this many flops (thop MACs of one input); "
                                   f"with no target, the lab's {LAB_TARGET_FLOPS} at --image-size 32 (other sizes "
                                   "need a target)", limit=COUNT)
    budget: float | None = arg(None, "prune the student to this fraction of the teacher's flops instead (a target "
                               "that follows the image size)", limit=BUDGET)
    target_params: int | None = arg(None, "prune the student to at most this many parameters instead", limit=COUNT)
    ratio: float | None = arg(None, "remove this fraction of every prunable layer's channels instead",
                              limit=Limit(lambda v: 0.0 <= v < 1.0, "in [0, 1) (the fraction of channels removed)"))
    importance: str = arg("l1", f"channel criterion (pruning.importance): l1 is the group L1 magnitude; "
                          f"{' and '.join(calibrated_names())} read --calibration-images images",
                          tuple(pruning.IMPORTANCES))
    global_pruning: bool = arg(False, "rank channels across layers instead of within each layer")
    round_to: int | None = arg(None, "keep channel counts multiples of this", limit=COUNT)
    calibration_images: int = arg(1024, "training images (unaugmented) that re-estimate the pruned student's "
                                  "BatchNorm statistics and that the taylor and activation criteria read", limit=COUNT)
    recalibrate_bn: bool = arg(True, "re-estimate BatchNorm statistics right after pruning (--no-recalibrate-bn: "
                               "keep the teacher's)")
    kd_loss: str | None = kd_loss_arg(None, " (default: from --recipe: classic kd-ls, fast kd at T 4, alpha 0.9)")
    finetune_lr: float | None = arg(None, "peak learning rate of the student's fine-tuning (--lr is a teacher's "
                                    "trained here) (default: from --recipe: classic 0.01, fast 0.3 x batch / 1024)",
                                    limit=POSITIVE)
    student_init: str = arg("pruned", "the student's starting weights: pruned (the teacher's) or scratch (the pruned "
                            "architecture re-initialised: Liu et al. 2019's control)", STUDENT_INITS)
    hint_layer: str | None = arg(None, "FitNet hint on this layer of student and teacher (e.g. features.conv3), its "
                                 "regressor started from the channels pruning kept; off by default")
    hint_weight: float = arg(1.0, "weight of the FitNet hint loss", limit=NON_NEGATIVE)
    out: str = arg("runs/prune_then_distill", "output folder")
    lab_target: ClassVar[int] = LAB_TARGET_FLOPS  # the default target, at the lab's image size only


@dataclass
class PruneThenDistillResult:
    """The three report lines (teacher, pruned student before fine-tuning, final student), the student, the pruning."""

    reports: list[ModelReport]
    student: nn.Module
    pruning: pruning.PruneResult


@lock.releasing
def main(argv: list[str] | None = None) -> PruneThenDistillResult:
    cfg = parse_config(PruneThenDistillConfig, argv, description=__doc__.split("\n")[0])
    use_committed_teacher(cfg)
    _check_target(cfg)
    run = start_kd_run(cfg)
    if cfg.budget is not None:
        cfg.target_flops = int(cfg.budget * run.teacher_report.flops)
        print(f"target: --budget {cfg.budget:g} of the teacher's {run.teacher_report.flops:,} flops = "
              f"{cfg.target_flops:,} flops", flush=True)
    data, out, loss, teacher = run.data, run.out, run.loss, run.teacher
    device = resolve_device(cfg.device)
    train_batches, test_batches = loaders(cfg, data)  # after obtain_teacher: a loaded teacher's normalisation

    teacher.to(device)
    pruned = pruning.prune(ensemble_members(teacher)[0], torch.zeros(data.input_size, device=device),
                           target_flops=cfg.target_flops,
                           target_params=cfg.target_params, ratio=cfg.ratio, importance=cfg.importance,
                           global_pruning=cfg.global_pruning, round_to=cfg.round_to,
                           calibration=_calibration(cfg, data), calibration_batches=_batches(cfg.calibration_images,
                                                                                             cfg.batch_size),
                           recalibrate_bn=cfg.recalibrate_bn, seed=cfg.seed)
    print_pruning(pruned)
    _warn_gutted(pruned)
    student = pruned.model
    if cfg.student_init == "scratch":
        restart(cfg, student, train_batches)
    pruned_report = ModelReport(f"student_{cfg.student_init}", pruned.after.flops, pruned.after.params,
                                pruned.after.param_size_kb, score(student, test_batches, cfg))

    seed_everything(cfg.seed)  # fine-tuning does not depend on how the teacher was obtained
    hint = _hint(cfg, student, teacher, pruned)
    print(f"\nfine-tuning the {'pruned' if cfg.student_init == 'pruned' else 're-initialised'} student for "
          f"{cfg.epochs} epochs: "
          + (f"distilling with {loss}" if loss.needs_teacher else "cross-entropy only")
          + (f" + FitNet hint on {cfg.hint_layer}" if hint is not None else ""))
    result = fit_stage(student, cfg, train_batches, test_batches, out_dir=out / "student_train", lr=cfg.finetune_lr,
                       teacher=teacher, loss=loss, feature_loss=hint)
    if hint is not None:
        hint.remove()
    student_report = ModelReport.measure("student", student, result.last_accuracy, data.input_size)
    pruning.save(student, out / "student.pt", meta={
        "accuracy": student_report.accuracy, **data.meta(), "importance": pruned.importance,
        "pruning_ratio": pruned.ratio})
    save_portable(student, out / "student", data.meta())  # student.safetensors + student.json: rebuilt without us

    reports = [*run.member_reports, run.teacher_report, pruned_report, student_report]
    finish_run(cfg, out, reports, meta=data.meta(), teacher=teacher, student=student, input_size=data.input_size,
               extra={"pruning": _pruning_summary(pruned), "history": result.to_dict()["history"]}, data=data)
    print(f"\nstudent saved to {out / 'student.pt'} (load it with pruning.load) and, for use without this package, "
          f"{out / 'student.safetensors'} + student.json (README: taking the student out)")
    return PruneThenDistillResult(reports, student, pruned)


def restart(cfg: PruneThenDistillConfig, student: nn.Module, train_batches: BatchIterator) -> None:
    """``--student-init scratch``: the pruned ``student`` re-initialised in place (:func:`models.init.reinitialize`,
    seeded with ``--seed``), then given ``--init`` as every model built by a run is; its widths and flops stay."""
    seed_everything(cfg.seed)
    count = reinitialize(student)
    print(f"  student from scratch: {count} modules re-initialised, widths kept", flush=True)
    init_model(cfg, student, train_batches)


def _check_target(cfg: PruneThenDistillConfig) -> None:
    """One target at most; with none, the lab's absolute flops at the lab's 32 px. At other sizes no target is left
    as it is, and refused once the options and inputs checked before it pass
    (:func:`recipes.plumbing.option_checks.check_with_data` reads ``lab_target``): a flops count belongs to one image
    size (at 224 px the lab's budget is 1.6 % of resnet18)."""
    given = [f for f in ("target_flops", "target_params", "ratio", "budget") if getattr(cfg, f) is not None]
    if len(given) > 1:
        raise ValueError(f"{' and '.join('--' + f.replace('_', '-') for f in given)} are alternative targets; pass "
                         "only one of them")
    if not given and cfg.image_size == LAB_IMAGE_SIZE:
        cfg.target_flops = LAB_TARGET_FLOPS


def _warn_gutted(res: pruning.PruneResult, removed: float = 0.95) -> None:
    """One line on stdout naming the layers that lost more than ``removed`` of their channels."""
    gutted = res.gutted_layers(removed)
    if gutted:
        shown = ", ".join(f"{n} {c[0]}→{c[1]}" for n, c in list(gutted.items())[:6])
        more = f" (+{len(gutted) - 6} more)" if len(gutted) > 6 else ""
        print(f"warning: the target removed more than {removed:.0%} of the channels of {shown}{more}; a target "
              "relative to the teacher (--budget FRACTION) or a larger one keeps these layers", flush=True)


def _calibration(cfg: PruneThenDistillConfig, data: DataSplits) -> BatchIterator | TransformBatchIterator | None:
    """Unaugmented batches of a class-balanced subset of the training images: for BatchNorm re-estimation and the
    taylor and activation criteria."""
    if not needs_calibration(cfg.importance) and not cfg.recalibrate_bn:
        return None
    if data.policy is not None:  # as the evaluation sees them: aspect kept, centre crop
        policy = dataclasses.replace(data.policy, mean=tuple(data.mean), std=tuple(data.std))
        return TransformBatchIterator(subset_source(data.train, cfg.calibration_images, seed=cfg.seed),
                                      cfg.batch_size, train=False, policy=policy, device=resolve_device(cfg.device),
                                      workers=cfg.workers)
    images = subset(data.train, cfg.calibration_images, seed=cfg.seed)
    return BatchIterator(images, cfg.batch_size, train=False, mean=data.mean, std=data.std,
                         device=resolve_device(cfg.device))


def _batches(images: int, batch_size: int) -> int:
    return max(1, -(-images // batch_size))


def _hint(cfg: PruneThenDistillConfig, student: nn.Module, teacher: nn.Module,
          pruned: pruning.PruneResult) -> HintLoss | None:
    """A FitNet hint on ``--hint-layer``, its regressor the inverse of the channel selection pruning made there."""
    if cfg.hint_layer is None:
        return None
    layer = student.get_submodule(cfg.hint_layer)
    convs = [n for n, m in layer.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"--hint-layer {cfg.hint_layer!r} has no conv layer whose channels pruning kept")
    source = f"{cfg.hint_layer}.{convs[-1]}" if convs[-1] else cfg.hint_layer
    return HintLoss(student, teacher, cfg.hint_layer, cfg.hint_layer, weight=cfg.hint_weight,
                    kept_channels=pruned.kept[source])


def print_pruning(res: pruning.PruneResult, max_layers: int = 8) -> None:
    """A short before/after table and the widths of the first pruned layers."""
    b, a = res.before, res.after
    how = f"ratio {res.ratio:.4f}" + (f", found in {len(res.steps)} tries" if len(res.steps) > 1 else "")
    print(f"\npruning ({res.importance}, {how}):\n"
          f"  {'':8} {'flops':>14} {'params':>12} {'size kB':>10}\n"
          f"  {'before':8} {b.flops:>14,} {b.params:>12,} {b.param_size_kb:>10.1f}\n"
          f"  {'after':8} {a.flops:>14,} {a.params:>12,} {a.param_size_kb:>10.1f}\n"
          f"  {'kept':8} {a.flops / b.flops:>14.1%} {a.params / b.params:>12.1%} {a.params / b.params:>10.1%}")
    layers = res.pruned_layers()
    shown = ", ".join(f"{n} {c[0]}→{c[1]}" for n, c in list(layers.items())[:max_layers])
    more = f" (+{len(layers) - max_layers} more)" if len(layers) > max_layers else ""
    print(f"  channels: {shown}{more}")


def _pruning_summary(res: pruning.PruneResult) -> dict:
    return {"importance": res.importance, "ratio": res.ratio, "before": dataclasses.asdict(res.before),
            "after": dataclasses.asdict(res.after), "layers": {n: list(c) for n, c in res.pruned_layers().items()},
            "steps": [dataclasses.asdict(s) for s in res.steps]}


if __name__ == "__main__":
    run_main(main)
