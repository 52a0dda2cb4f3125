"""Distil a teacher into a student trained from scratch (any registry model), then report both.

    python recipes/distill_only.py --dataset imagefolder --data-dir ../shared/data/cifar10 \
        --teacher runs/teacher/teacher.pt --arch wide_cnn --model-args '{"widths": [32, 64, 128, 128]}'

Without --teacher a teacher is trained first on the same data (--teacher-arch, --teacher-epochs). The loss is
alpha · T² · KL(softmax(t/T) ‖ softmax(s/T)) + (1 − alpha) · CE(s, y); --alpha 0 trains the student with
cross-entropy alone. Writes OUT/student.pt (pickle-free), OUT/report.json, OUT/config.json.
"""
from __future__ import annotations

import recipes.plumbing.signals  # noqa: F401,I001 (first: Ctrl-C while torch loads is one line)
import dataclasses
from dataclasses import dataclass

from kd import HintLoss
from models import create_model, list_models, save_model
from recipes.plumbing import lock
from recipes.plumbing.config import KDConfig, arg, parse_config
from recipes.plumbing.report import ModelReport, print_reports, write_report
from recipes.plumbing.run import (
    deployment, init_model, loaders, make_loss, model_args, obtain_teacher, run_main, seed_everything, start_run,
    train,
)


@dataclass
class DistillConfig(KDConfig):
    arch: str = arg("wide_cnn", f"student architecture: {', '.join(list_models())} or timm:<name>")
    model_args: str = arg('{"widths": [32, 64, 128, 128], "hidden": 256}', "JSON of the student's architecture "
                          "arguments")
    hint_student_layer: str | None = arg(None, "FitNet hint: student layer (e.g. features.conv3); off by default")
    hint_teacher_layer: str | None = arg(None, "FitNet hint: teacher layer matched to --hint-student-layer")
    hint_weight: float = arg(1.0, "weight of the FitNet hint loss")
    out: str = arg("runs/distill", "output folder")


@lock.releasing
def main(argv: list[str] | None = None) -> list[ModelReport]:
    cfg = parse_config(DistillConfig, argv, description=__doc__.split("\n")[0])
    loss = make_loss(cfg)
    data, out = start_run(cfg)
    teacher, teacher_report = obtain_teacher(cfg, data, out)
    train_batches, test_batches = loaders(cfg, data)
    seed_everything(cfg.seed)  # the student's initial weights do not depend on how the teacher was obtained
    student = create_model(cfg.arch, data.num_classes, **model_args(cfg.model_args))
    init_model(cfg, student, train_batches)
    hint = None
    if cfg.hint_student_layer or cfg.hint_teacher_layer:
        if not (cfg.hint_student_layer and cfg.hint_teacher_layer):
            raise ValueError("a FitNet hint needs both --hint-student-layer and --hint-teacher-layer")
        hint = HintLoss(student, teacher, cfg.hint_student_layer, cfg.hint_teacher_layer, weight=cfg.hint_weight)
    uses_teacher = loss.needs_teacher or hint is not None  # cross-entropy without a hint: the teacher is not run
    print(f"student {cfg.arch}: " + (f"distilling with {loss}" if loss.needs_teacher else "cross-entropy only"))
    result = train(student, cfg, train_batches, test_batches, out_dir=out / "student_train",
                   teacher=teacher if uses_teacher else None, loss=loss, feature_loss=hint)
    if hint is not None:
        hint.remove()
    student_report = ModelReport.measure("student", student, result.last_accuracy, data.input_size)
    save_model(student, out / "student.pt", meta={"accuracy": student_report.accuracy, **data.meta()})
    reports = [teacher_report, student_report]
    print_reports(reports)
    deployed = deployment(cfg, teacher, student, data.input_size, out)
    write_report(out / "report.json", reports, dataclasses.asdict(cfg),
                 {"history": result.to_dict()["history"], **deployed})
    print(f"\nstudent saved to {out / 'student.pt'}")
    return reports


if __name__ == "__main__":
    run_main(main)
