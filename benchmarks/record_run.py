"""Keeps a finished recipe run as a small JSON record under ``benchmarks/results/``: the command, the hardware, the
sittings (where each start or ``--resume`` trained) and every model's block of its ``report.json``, and the
per-epoch curve of each training stage (``*/metrics.csv``), so that a run whose folder does not outlive the session
still backs the numbers quoted from it.

    python benchmarks/record_run.py runs/seed_budget --name seed_budget/ens8_s0 \\
        --command "python recipes/prune_then_distill.py ..."
"""
from __future__ import annotations

import json
from pathlib import Path

from kd.metrics import read_metrics
from recipes.plumbing.config import OneLineParser
from recipes.plumbing.errors import run_main
from recipes.plumbing.report import write_json

RESULTS = Path(__file__).resolve().parent / "results"
CURVE_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_accuracy", "seconds", "lr")


def stage_curves(run: Path) -> dict[str, list[dict[str, float]]]:
    """``{stage folder: [{column: value} per epoch]}`` of the run's ``*/metrics.csv`` (the columns of
    :data:`CURVE_COLUMNS` that the file has, read with :func:`kd.metrics.read_metrics`; empty cells are left out)."""
    curves = {}
    for path in sorted(run.glob("*/metrics.csv")):
        rows, _ = read_metrics(path)
        curves[path.parent.name] = [{k: row[k] if k == "epoch" else round(row[k], 4)
                                     for k in CURVE_COLUMNS if row.get(k) is not None} for row in rows]
    return curves


def record(run: Path, command: str) -> dict:
    """The record of the finished run in ``run`` (its ``report.json`` must exist); ``sittings`` only when the report
    has them."""
    report = json.loads((run / "report.json").read_text())
    sittings = {"sittings": report["sittings"]} if report.get("sittings") else {}
    return {"command": command, "hardware": report.get("hardware"), **sittings,
            "models": report["models"], "curves": stage_curves(run)}


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="the --out folder of a finished recipe run")
    parser.add_argument("--name", required=True, help="the record's path under benchmarks/results, without .json")
    parser.add_argument("--command", required=True, help="the command that made the run, as it should be quoted")
    args = parser.parse_args(argv)
    run = Path(args.run)
    if not (run / "report.json").is_file():
        raise ValueError(f"{str(run)!r} holds no report.json: not a finished recipe run")
    out = RESULTS / f"{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, record(run, args.command))
    print(f"written to {out}")


if __name__ == "__main__":
    run_main(main)
