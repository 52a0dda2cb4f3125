"""The teacher and student grid on one GPU machine: many runs at once, a hard deadline, results in one archive.

A small network leaves a large GPU mostly idle, so this runs ``--jobs`` benchmark processes side by side (each one
``benchmarks/fast_recipe.py`` teacher run or one ``benchmarks/kd_gain.py`` cell, the documented commands), starts the
student cells as soon as their teacher has finished, stops everything at ``--deadline`` seconds, and packs
``benchmarks/results`` (each finished run's JSON, written by those scripts), the logs and the chosen teachers' files
into ``--out``. Made for a lent machine with minutes of time (see BENCHMARKS.md, "Runs on a GPU"):

    python benchmarks/jpeg_pack.py unpack .devdata/cifar10.npz /tmp/c10
    python benchmarks/device_sweep.py --data-dir /tmp/c10 --out $OUT --deadline 420

``--smoke`` runs a tiny version of the same grid on the CPU (a few hundred images, one epoch) to test the plumbing.
``--grid scratch`` runs the scratch arm's cells instead of the Δ table's (:func:`scratch_cells`), from the teacher
given with ``--teacher`` (or trained first):

    python benchmarks/device_sweep.py --data-dir /tmp/c10 --out $OUT --deadline 420 --grid scratch \\
        --teacher benchmarks/weights/fast_cnn_cifar10_e40.pt

``--grid strong`` is issue 29's: teachers meant to pass 92 % (:data:`STRONG_TEACHERS`), the wide ones' ensemble
distilled into one network, and from the first wide teacher the seed-budget students and the scratch arm
(:func:`strong_grid`); the copy of the JPEG folder that ships with the package is the data:

    python benchmarks/jpeg_pack.py unpack kd/data/files/cifar10-jpeg.npz /tmp/c10
    python benchmarks/device_sweep.py --data-dir /tmp/c10 --out $OUT --deadline 480 --jobs 12 --grid strong
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from recipes.plumbing.config import OneLineParser
from recipes.plumbing.errors import run_main

REPO = Path(__file__).resolve().parent.parent
TEACHER = "fast-40"  # the teacher the students start from
SEED_BUDGET, HALF, EIGHTH = 31269888, 59190672, 14797668  # fast_cnn is 118,381,344 flops


@dataclass
class Job:
    name: str
    argv: list[str]
    after: tuple[str, ...] = ()  # jobs that must finish first (with status 0)
    proc: subprocess.Popen | None = field(default=None, repr=False)
    started: float = 0.0
    rc: int | None = None


def teacher_dir(runs: Path, run: str, tag: str, seed: int = 0) -> Path:
    return runs / "teachers" / f"fast_cnn_{run}_seed{seed}_{tag}"


def grid(args: argparse.Namespace) -> list[Job]:
    """Teachers first (the students' teacher before the rest), then the student cells in order of importance."""
    runs, tag, py = Path(args.runs), args.tag, sys.executable
    small = ["--limit-train", "600", "--limit-test", "300", "--epochs", "1"] if args.smoke else []
    device = ["--device", args.device]
    if args.grid == "strong":
        return strong_grid(args, device, small)
    teachers = [TEACHER, "fast-20", "fast", "fast-12", "fast-reflect", "fast-wide-12"]
    jobs = [Job(f"teacher-{run}", [py, "benchmarks/fast_recipe.py", "--data-dir", args.data_dir, "--runs", run,
                                   "--tag", tag, "--out", str(runs / "teachers"), "--", *device, *small])
            for run in teachers]
    teacher_file, after = str(teacher_dir(runs, TEACHER, tag) / "teacher.pt"), (f"teacher-{TEACHER}",)
    if args.teacher:  # the students' teacher is given: no teacher runs
        jobs, teacher_file, after = [], args.teacher, ()
    cells = scratch_cells() if args.grid == "scratch" else delta_cells()
    jobs += cell_jobs(args, cells, teacher_file, args.cell_tag or f"{tag}-t40", after, device, small)
    if args.smoke:  # one teacher of each network (unless given) and the first two cells
        return jobs[-len(cells):][:2] if args.teacher else [jobs[0], jobs[len(teachers) - 1], *jobs[len(teachers):][:2]]
    return jobs


Cell = tuple[int, int, str, float, int, str]  # flops target, epochs, loss, fine-tuning rate, seed, student start


def cell_jobs(args: argparse.Namespace, cells: list[Cell], teacher_file: str, cell_tag: str, after: tuple[str, ...],
              device: list[str], small: list[str]) -> list[Job]:
    """One ``benchmarks/kd_gain.py`` process per cell, from ``teacher_file``, its results tagged ``cell_tag``."""
    return [Job(f"cell-{cell_tag}-{flops}-{epochs}-{loss}-{lr:g}-{seed}" + ("" if init == "pruned" else f"-{init}"), [
        sys.executable, "benchmarks/kd_gain.py", "--teacher", teacher_file, "--data-dir", args.data_dir,
        "--flops", str(flops), "--epochs", str(1 if args.smoke else epochs), "--losses", loss, "--lrs", str(lr),
        "--seeds", str(seed), "--init", init, "--tag", cell_tag, "--out", str(Path(args.runs) / "kd"), "--",
        *device, *small[:4]], after=after) for flops, epochs, loss, lr, seed, init in cells]


STRONG_TEACHERS = (("fast-wide-40", 0), ("fast-wide-40", 1), ("fast-wide-40", 2), ("fast-80", 0), ("fast-wide-80", 0),
                   ("fast-wide-40-cutout", 0))
WIDE_ARGS = '{"widths": [128, 128, 384, 384, 384, 384]}'  # fast_recipe.WIDE


def strong_grid(args: argparse.Namespace, device: list[str], small: list[str]) -> list[Job]:
    """Issue 29's grid: candidates for a >= 92 % teacher (:data:`STRONG_TEACHERS`: fast_cnn for 80 epochs, airbench95's
    widths for 40 and 80), the three wide-40 teachers' ensemble (mean of logits, each teacher also seeing the mirror
    image) distilled into one wide network for 80 epochs, then from the first wide-40 teacher the seed-budget students
    (KD and CE for 40 and 80 epochs from the pruned weights) and the four-way table's cells (:func:`scratch_cells`
    at the seed's budget, 20 and 40 epochs), tagged ``<tag>-wide40``."""
    runs, py = Path(args.runs), sys.executable
    jobs = [Job(f"teacher-{run}-s{seed}", [py, "benchmarks/fast_recipe.py", "--data-dir", args.data_dir, "--runs", run,
                                           "--seeds", str(seed), "--tag", args.tag, "--out", str(runs / "teachers"),
                                           "--", *device, *small]) for run, seed in STRONG_TEACHERS]
    wide = [str(teacher_dir(runs, "fast-wide-40", args.tag, s) / "teacher.pt") for s in (0, 1, 2)]
    jobs.append(Job("ensemble-wide-80", [
        py, "recipes/distill_only.py", "--dataset", "imagefolder", "--data-dir", args.data_dir, "--recipe", "fast",
        "--teacher", *wide, "--teacher-tta", "--arch", "fast_cnn", "--model-args", WIDE_ARGS, "--epochs", "80",
        "--out", str(runs / "ensemble-wide-80"), "--overwrite", "--no-progress", *device, *small],
        after=tuple(f"teacher-fast-wide-40-s{s}" for s in (0, 1, 2))))
    cells = [(SEED_BUDGET, e, loss, 0.3, 0, "pruned") for e in (40, 80) for loss in ("kd", "ce")]
    cells += [c for c in scratch_cells() if c[0] == SEED_BUDGET and c[1] in (20, 40)]
    jobs += cell_jobs(args, cells, wide[0], f"{args.tag}-wide40", ("teacher-fast-wide-40-s0",), device, small)
    return jobs[:1] + jobs[-2:] if args.smoke else jobs


def delta_cells() -> list[Cell]:
    """The Δ table's cells (KD against CE from the pruned weights), in order of importance."""
    budgets = ((SEED_BUDGET, 8), (SEED_BUDGET, 40), (SEED_BUDGET, 2), (HALF, 2), (HALF, 8), (EIGHTH, 2), (EIGHTH, 8))
    cells = [(f, e, loss, 0.3, seed, "pruned") for f, e in budgets for seed in (0, 1, 2) for loss in ("ce", "kd")]
    cells += [(SEED_BUDGET, e, loss, lr, 0, "pruned") for e in (8, 2) for lr in (0.1, 1.0) for loss in ("ce", "kd")]
    return cells + [(SEED_BUDGET, 20, loss, 0.3, seed, "pruned") for seed in (0, 1, 2) for loss in ("ce", "kd")]


def scratch_cells() -> list[Cell]:
    """The four-way table's cells (issue 29; Liu et al. 2019's Scratch-E): the pruned architecture from fresh
    weights with CE and KD, beside the pruned start, at the seed's budget (about ¼ of fast_cnn's flops) and ½, for
    20, 40 and 8 epochs, 3 seeds. Scratch trains at the fine-tuning rate 0.3 and at 1.5, the fast recipe's rate for a
    new model, so each arm is read at its own best rate. A pruned cell already under benchmarks/results is skipped by
    kd_gain.py in a second."""
    cells = []
    for flops, epochs in ((SEED_BUDGET, 20), (SEED_BUDGET, 40), (SEED_BUDGET, 8), (HALF, 20), (HALF, 8), (HALF, 40)):
        for seed in (0, 1, 2):
            cells += [(flops, epochs, loss, lr, seed, "scratch") for lr in (1.5, 0.3) for loss in ("ce", "kd")]
            cells += [(flops, epochs, loss, 0.3, seed, "pruned") for loss in ("ce", "kd")]
    return cells


def run_all(jobs: list[Job], parallel: int, deadline: float, logs: Path) -> None:
    """Starts ready jobs (their ``after`` finished with status 0) up to ``parallel`` at a time until all are done or
    the deadline passes; then kills what still runs."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
    by_name = {j.name: j for j in jobs}
    while time.monotonic() < deadline:
        for job in jobs:
            if job.proc is not None and job.rc is None and job.proc.poll() is not None:
                job.rc = job.proc.returncode
                seconds = time.monotonic() - job.started
                print(f"{time.strftime('%H:%M:%S')} done {job.name} rc={job.rc} in {seconds:.0f} s", flush=True)
        finished = [j.rc for j in jobs if j.rc is not None]
        if len(finished) >= 4 and not any(rc == 0 for rc in finished):
            print("the first runs all failed: stopping (see the logs)", flush=True)
            break
        running = [j for j in jobs if j.proc is not None and j.rc is None]
        waiting = [j for j in jobs if j.proc is None and all(by_name[a].rc == 0 for a in j.after)]
        if not running and not waiting:
            break
        for job in waiting[:max(0, parallel - len(running))]:
            job.started = time.monotonic()
            job.proc = subprocess.Popen(job.argv, cwd=REPO, env=env, stdout=open(logs / f"{job.name}.log", "w"),
                                        stderr=subprocess.STDOUT)
            print(f"{time.strftime('%H:%M:%S')} start {job.name}", flush=True)
        time.sleep(1)
    for job in jobs:
        if job.proc is not None and job.rc is None:
            job.proc.kill()
            print(f"deadline: killed {job.name}", flush=True)
    skipped = [j.name for j in jobs if j.proc is None]
    print(f"not started: {len(skipped)} {skipped[:8]}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True, help="CIFAR-10 in ImageFolder layout")
    parser.add_argument("--out", required=True, help="where the archive and the teachers' files go")
    parser.add_argument("--runs", default="/tmp/device_runs", help="the runs' folders")
    parser.add_argument("--tag", default="h200", help="names the result files of this machine's runs")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--jobs", type=int, default=8, help="runs at once")
    parser.add_argument("--deadline", type=float, default=420, help="seconds after which every run is stopped")
    parser.add_argument("--teacher", help="the students' teacher file (default: train it, as the run fast-40)")
    parser.add_argument("--smoke", action="store_true", help="tiny runs on few images, to test the plumbing")
    parser.add_argument("--cell-tag", help="names the student cells' result files (default: TAG-t40, the cells "
                        "from the 90.88 %% teacher); give another for another teacher")
    parser.add_argument("--grid", choices=("delta", "scratch", "strong"), default="delta", help="the student cells: "
                        "delta (KD against CE from the pruned weights), scratch (the four-way table with the scratch "
                        "arm) or strong (issue 29: teachers for 92 %%, their ensemble, students from the wide one)")
    args = parser.parse_args(argv)
    start = time.monotonic()
    out, logs = Path(args.out), Path(args.runs) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    run_all(grid(args), args.jobs, start + args.deadline, logs)
    with tarfile.open(out / "results.tgz", "w:gz") as tar:
        tar.add(REPO / "benchmarks" / "results", arcname="results")
        tar.add(logs, arcname="logs")
    keep = [(run, 0) for run in (TEACHER, "fast-20")] + list(STRONG_TEACHERS if args.grid == "strong" else ())
    for run, seed in keep:
        teacher = teacher_dir(Path(args.runs), run, args.tag, seed) / "teacher.pt"
        if teacher.is_file():
            shutil.copy(teacher, out / f"fast_cnn_{run}_seed{seed}_{args.tag}.pt")
    for model in [Path(args.runs) / "ensemble-wide-80" / "student.pt", *(Path(args.runs) / "kd").glob("*/student.pt")]:
        if model.is_file() and model.stat().st_size < 32 << 20:  # the students and the distilled ensemble (18 MB)
            shutil.copy(model, out / f"{model.parent.name}.pt")
    print(f"finished in {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    run_main(main)
