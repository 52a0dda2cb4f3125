"""Distil a teacher into a student trained from scratch (any registry model), then report both.

    python recipes/distill_only.py --dataset imagefolder --data-dir ../shared/data/cifar10 \
        --teacher runs/teacher/teacher.pt --arch wide_cnn --model-args '{"widths": [32, 64, 128, 128]}'

Without --teacher a teacher is trained first on the same data (--teacher-arch, --teacher-epochs); with
--initial-checkpoint FILE the student starts from FILE's weights (e.g. an earlier run's student, distilled again at a
lower --lr). The loss is alpha · T² · KL(softmax(t/T) ‖ softmax(s/T)) + (1 − alpha) · CE(s, y); --alpha 0 trains
the student with cross-entropy alone. Writes OUT/student.pt (pickle-free), OUT/report.json, OUT/config.json.
"""
from __future__ import annotations

import recipes.plumbing.signals  # noqa: F401,I001 (first: Ctrl-C while torch loads is one line)
from dataclasses import dataclass
from typing import Any, ClassVar

from kd import HintLoss
from models import create_model, list_models, save_model, save_portable
from recipes.plumbing import lock
from recipes.plumbing.config import KDConfig, NON_NEGATIVE, arg, parse_config, recipe_arch_args
from recipes.plumbing.checks import model_args
from recipes.plumbing.errors import run_main
from recipes.plumbing.report import ModelReport
from recipes.plumbing.run import finish_run, start_kd_run
from recipes.plumbing.teachers import use_committed_teacher
from recipes.plumbing.training import fit_stage, init_model, loaders, seed_everything, start_from


WIDE_STUDENT = '{"widths": [32, 64, 128, 128], "hidden": 256}'  # half the teacher's widths


@dataclass
class DistillConfig(KDConfig):
    arch: str = arg("wide_cnn", f"student architecture: {', '.join(list_models())} or timm:<name>")
    model_args: str | None = arg(None, "JSON of the student's architecture arguments (default: for wide_cnn "
                                 f"{WIDE_STUDENT}, for any other --arch its own defaults, {{}})")
    initial_checkpoint: str | None = arg(None, "start the student from this file, not --init: a model file of --arch "
                                         "(e.g. a student.pt, rebuilt as saved) or weights of --arch --model-args")
    hint_student_layer: str | None = arg(None, "FitNet hint: student layer (e.g. features.conv3); off by default")
    hint_teacher_layer: str | None = arg(None, "FitNet hint: teacher layer matched to --hint-student-layer")
    hint_weight: float = arg(1.0, "weight of the FitNet hint loss", limit=NON_NEGATIVE)
    out: str = arg("runs/distill", "output folder")

    DERIVED_FROM: ClassVar[tuple[str, ...]] = (*KDConfig.DERIVED_FROM, "arch")

    def option_defaults(self) -> dict[str, Any]:
        """``--model-args`` when not given: the lab's small student for ``wide_cnn``, the architecture's own
        defaults for any other ``--arch`` (wide_cnn's widths would not fit it)."""
        return {"model_args": WIDE_STUDENT if self.arch == "wide_cnn" else "{}"}


@lock.releasing
def main(argv: list[str] | None = None) -> list[ModelReport]:
    cfg = parse_config(DistillConfig, argv, description=__doc__.split("\n")[0])
    use_committed_teacher(cfg)
    run = start_kd_run(cfg)
    data, out, loss = run.data, run.out, run.loss
    train_batches, test_batches = loaders(cfg, data)
    seed_everything(cfg.seed)  # the student's initial weights do not depend on how the teacher was obtained
    student = create_model(cfg.arch, data.num_classes, **recipe_arch_args(cfg.recipe, cfg.arch,
                                                                          model_args(cfg.model_args)))
    if cfg.initial_checkpoint is None:
        init_model(cfg, student, train_batches)
    else:
        student = start_from(student, cfg.initial_checkpoint, data)
    hint = None
    if cfg.hint_student_layer is not None:  # start_run checked that both layers are given and exist
        hint = HintLoss(student, run.teacher, cfg.hint_student_layer, cfg.hint_teacher_layer, weight=cfg.hint_weight)
    print(f"student {cfg.arch}: " + (f"distilling with {loss}" if loss.needs_teacher else "cross-entropy only"))
    result = fit_stage(student, cfg, train_batches, test_batches, out_dir=out / "student_train", teacher=run.teacher,
                       loss=loss, feature_loss=hint)
    if hint is not None:
        hint.remove()
    student_report = ModelReport.measure("student", student, result.last_accuracy, data.input_size)
    save_model(student, out / "student.pt", meta={"accuracy": student_report.accuracy, **data.meta()})
    save_portable(student, out / "student", data.meta())  # student.safetensors + student.json: rebuilt without us
    reports = [*run.member_reports, run.teacher_report, student_report]
    finish_run(cfg, out, reports, meta=data.meta(), teacher=run.teacher, student=student, input_size=data.input_size,
               extra={"history": result.to_dict()["history"]}, data=data)
    print(f"\nstudent saved to {out / 'student.pt'}")
    return reports


if __name__ == "__main__":
    run_main(main)
