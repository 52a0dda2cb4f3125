"""Train a teacher (any registry model) with cross-entropy and write its report block and model file.

    python recipes/train_teacher.py --dataset imagefolder --data-dir ../shared/data/cifar10 --epochs 30

Writes OUT/teacher.pt (pickle-free, read by --teacher of the other recipes), OUT/report.json, OUT/config.json and
OUT/train/{last,best}.pt (resume with --resume).
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from kd import DistillationLoss  # noqa: E402
from kd.config import RunConfig, arg, parse_config, save_config  # noqa: E402
from kd.report import ModelReport, print_reports, write_report  # noqa: E402
from kd.run import load_data, loaders, model_args, run_main, seed_everything, train  # noqa: E402
from models import create_model, list_models, save_model  # noqa: E402


@dataclass
class TeacherConfig(RunConfig):
    arch: str = arg("wide_cnn", f"architecture: {', '.join(list_models())} or timm:<name>")
    model_args: str = arg("{}", "JSON of architecture arguments, e.g. '{\"widths\": [32, 64, 128, 128]}'")
    label_smoothing: float = arg(0.0, "label smoothing of the cross-entropy")
    out: str = arg("runs/teacher", "output folder")


def main(argv: list[str] | None = None) -> ModelReport:
    cfg = parse_config(TeacherConfig, argv, description=__doc__.split("\n")[0])
    out = Path(cfg.out)
    save_config(cfg, out / "config.json")
    seed_everything(cfg.seed)
    data = load_data(cfg)
    train_batches, test_batches = loaders(cfg, data)
    model = create_model(cfg.arch, data.num_classes, **model_args(cfg.model_args))
    print(f"{cfg.arch}: {len(data.train)} training / {len(data.test)} test images, {data.num_classes} classes")
    result = train(model, cfg, train_batches, test_batches, out_dir=out / "train",
                   loss=DistillationLoss(alpha=0.0, label_smoothing=cfg.label_smoothing))
    report = ModelReport.measure("teacher", model, result.last_accuracy, data.input_size)
    save_model(model, out / "teacher.pt", meta={"accuracy": report.accuracy, "classes": data.classes,
                                                "mean": list(data.mean), "std": list(data.std),
                                                "image_size": cfg.image_size, "dataset": cfg.dataset})
    print_reports([report])
    write_report(out / "report.json", [report], dataclasses.asdict(cfg), {"history": result.to_dict()["history"]})
    print(f"\nteacher saved to {out / 'teacher.pt'}")
    return report


if __name__ == "__main__":
    run_main(main)
