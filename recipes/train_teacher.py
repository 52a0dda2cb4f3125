"""Train a teacher (any registry model) with cross-entropy and write its report block and model file.

    python recipes/train_teacher.py --dataset cifar10 --epochs 30
    python recipes/train_teacher.py --dataset cifar10 --arch fast_cnn --recipe fast   # airbench94's recipe

Writes OUT/teacher.pt (pickle-free, read by --teacher of the other recipes), OUT/report.json, OUT/config.json and
OUT/teacher_train/{last,best}.pt (resume with --resume).
"""
from __future__ import annotations

import recipes.plumbing.signals  # noqa: F401,I001 (first: Ctrl-C while torch loads is one line)
from dataclasses import dataclass

from models import list_models
from recipes.plumbing import lock
from recipes.plumbing.config import RunConfig, arg, parse_config
from recipes.plumbing.checks import model_args
from recipes.plumbing.errors import run_main
from recipes.plumbing.report import ModelReport
from recipes.plumbing.run import finish_run, start_run
from recipes.plumbing.training import fit_teacher


@dataclass
class TeacherConfig(RunConfig):
    arch: str = arg("wide_cnn", f"architecture: {', '.join(list_models())} or timm:<name>")
    model_args: str = arg("{}", "JSON of architecture arguments, e.g. '{\"widths\": [32, 64, 128, 128]}'")
    out: str = arg("runs/teacher", "output folder")


@lock.releasing
def main(argv: list[str] | None = None) -> ModelReport:
    cfg = parse_config(TeacherConfig, argv, description=__doc__.split("\n")[0])
    data, out = start_run(cfg)
    _, report = fit_teacher(cfg, data, cfg.arch, model_args(cfg.model_args), out)
    finish_run(cfg, out, [report], data=data)
    print(f"\nteacher saved to {out / 'teacher.pt'}")
    return report


if __name__ == "__main__":
    run_main(main)
