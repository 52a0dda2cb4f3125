"""Train a teacher (any registry model) with cross-entropy and write its report block and model file.

    python recipes/train_teacher.py --dataset cifar10 --epochs 30
    python recipes/train_teacher.py --dataset cifar10 --arch fast_cnn --recipe fast   # airbench94's recipe
    python recipes/train_teacher.py --dataset cifar10 --arch timm:resnet18 --initial-checkpoint r18.safetensors \
        --new-head --epochs 5            # transfer learning: the weights of another data set, a new classifier

Writes OUT/teacher.pt (pickle-free, read by --teacher of the other recipes), OUT/report.json, OUT/config.json and
OUT/teacher_train/{last,best}.pt (resume with --resume).
"""
from __future__ import annotations

import recipes.plumbing.signals  # noqa: F401,I001 (first: Ctrl-C while torch loads is one line)
from dataclasses import dataclass

from models import list_models
from recipes.plumbing import external_teacher, lock
from recipes.plumbing.config import RunConfig, arg, parse_config
from recipes.plumbing.checks import model_args
from recipes.plumbing.errors import run_main
from recipes.plumbing.report import ModelReport
from recipes.plumbing.run import finish_run, start_run
from recipes.plumbing.training import fit_teacher


@dataclass
class TeacherConfig(RunConfig):
    arch: str = arg("wide_cnn", f"architecture: {', '.join(list_models())}, timm:<name> or module:qualname (your own "
                    "code)")
    model_args: str = arg("{}", "JSON of architecture arguments, e.g. '{\"widths\": [32, 64, 128, 128]}'")
    initial_checkpoint: str | None = arg(None, "start from these weights of --arch (.safetensors, or a .pth/.pt state "
                                         "dict, plain or wrapped as timm's): transfer learning")
    pretrained: bool = arg(False, "start from timm's pretrained weights of --arch timm:NAME")
    new_head: bool = arg(False, "replace the classifier of --initial-checkpoint / --pretrained with one for this "
                         "data's classes")
    out: str = arg("runs/teacher", "output folder")


@lock.releasing
def main(argv: list[str] | None = None) -> ModelReport:
    cfg = parse_config(TeacherConfig, argv, description=__doc__.split("\n")[0])
    data, out = start_run(cfg)
    external = external_teacher.source(cfg)
    start = external_teacher.prepare(external, data) if external is not None else None
    _, report = fit_teacher(cfg, data, cfg.arch, model_args(cfg.model_args), out, model=start)
    finish_run(cfg, out, [report], data=data)
    print(f"\nteacher saved to {out / 'teacher.pt'}")
    return report


if __name__ == "__main__":
    run_main(main)
