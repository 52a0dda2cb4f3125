"""The ``--out`` folder: locked for one run (:mod:`recipes.plumbing.lock`), refused when it holds an earlier run
(unless ``--resume`` with the same options and a checkpoint, or ``--overwrite``), and cleaned of stale temporary files
and, on ``--overwrite``, of the earlier run."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from kd import distributed
from kd.data import default_cache_dir
from models.checkpoint import check_finite, safe_load, stale_temp_files
from models.errors import FileFormatError
from recipes.plumbing import lock
from recipes.plumbing.config import RunConfig, config_differences


# What recipe runs write into OUT, and into each training stage's folder (OUT/<stage>/): --overwrite removes these
# and nothing else, so a file of the user's that happens to sit in OUT is never deleted.
RUN_FILES = ("config.json", "inputs.json", "report.json", "teacher.pt", "student.pt", "student.onnx",
             "student.export.json", "compare.md", "compare.png", "steps.md", "console.log", "sittings.json")
STAGE_FILES = ("last.pt", "best.pt", "metrics.csv", "curves.png")
STAGE_LOGS = "tb"  # --tensorboard's event files


def _cache_dir(cfg: RunConfig) -> Path:
    return Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()


def _earlier_entries(cfg: RunConfig, out: Path) -> list[str]:
    """What ``out`` holds besides stale temporary files and the decoded-image cache (when it lives inside)."""
    if not out.is_dir():
        return []
    stale, cache = set(stale_temp_files(out)), _cache_dir(cfg).resolve()
    return sorted(p.name for p in out.iterdir() if p not in stale and p.name not in lock.LOCK_FILES
                  and not (p.resolve() == cache or p.resolve() in cache.parents))


def check_out(cfg: RunConfig) -> Path:
    """The output folder, checked and locked for this run (:mod:`recipes.plumbing.lock`): not a file, not in use
    by another run; when it holds an earlier run, ``--resume`` (same options, a readable finite checkpoint) or
    ``--overwrite`` is required.

    Raises:
        ValueError: naming what is wrong and what to pass (:class:`~recipes.plumbing.lock.OutBusyError` names the
            process that holds the folder).
    """
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {cfg.out!r} is a file; pass a folder (it is created when missing)")
    if cfg.resume and cfg.overwrite:
        raise ValueError("--resume continues the earlier run in --out and --overwrite replaces it; pass only one")
    _check_teacher_is_no_output(cfg, out)
    if distributed.is_main():
        lock.acquire(out)  # before the folder is read or written: one run per folder (released by run_main)
    if cfg.resume:
        check_resume(cfg, out)
        return out
    earlier = _earlier_entries(cfg, out)
    if earlier and not cfg.overwrite:
        shown = ", ".join(earlier[:4]) + (", ..." if len(earlier) > 4 else "")
        raise ValueError(f"--out {cfg.out!r} already holds an earlier run ({shown}); pass --resume to continue it, "
                         "--overwrite to replace it, or choose another --out")
    return out


def _check_teacher_is_no_output(cfg: RunConfig, out: Path) -> None:
    """A ``--teacher`` file in ``out`` must not be one the run writes (any of :data:`RUN_FILES` but ``teacher.pt``,
    which a run with ``--teacher`` does not write): the student would replace the model it was distilled from."""
    written = {(out / name).resolve() for name in RUN_FILES if name != "teacher.pt"}
    for teacher in getattr(cfg, "teacher", None) or ():  # one or more files
        if Path(teacher).resolve() in written:
                raise ValueError(f"--teacher {teacher!r} is a file this run writes in --out {cfg.out!r} and would be "
                             "replaced; copy it elsewhere first, or choose another --out")


def check_resume(cfg: RunConfig, out: Path) -> None:
    """``--resume`` needs the earlier run's ``config.json`` with the same options (:func:`config_differences`) and at
    least one readable, finite ``*/last.pt`` checkpoint."""
    config = out / "config.json"
    if not config.is_file():
        raise ValueError(f"--resume: {cfg.out!r} holds no earlier run to continue (no config.json); run without "
                         "--resume")
    try:
        earlier = json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"--resume: {str(config)!r} is not valid JSON, so the options of the earlier run are "
                         "unknown; start afresh with --overwrite") from None
    if not isinstance(earlier, dict):
        raise ValueError(f"--resume: {str(config)!r} does not hold the options of a run; start afresh with "
                         "--overwrite")
    diffs = config_differences(earlier, cfg)
    if diffs:
        raise ValueError(f"--resume: the options differ from the earlier run in {cfg.out!r}: {'; '.join(diffs)}; "
                         "resume with the earlier options, or start afresh with --overwrite or another --out")
    checkpoints = sorted(out.glob("*/last.pt"))
    if not checkpoints:
        raise ValueError(f"--resume: {cfg.out!r} has no checkpoint (*/last.pt) to continue from; start afresh with "
                         "--overwrite")
    for path in checkpoints:
        state = safe_load(path, "checkpoint")
        if not isinstance(state, dict) or not isinstance(state.get("student"), dict):
            raise FileFormatError(f"checkpoint {str(path)!r} is not a kd.Trainer last.pt; start afresh with "
                                  "--overwrite")
        check_finite(state["student"], f"checkpoint {str(path)!r}")


def prepare_out(cfg: RunConfig, out: Path) -> None:
    """Removes temporary files a killed write left in ``out`` (and old ones in the cache folder), and on
    ``--overwrite`` the earlier run's outputs (:func:`remove_earlier_run`), so nothing of it is mixed into this run,
    reported beside it or resumed later."""
    for path in stale_temp_files(out) if out.is_dir() else []:
        path.unlink(missing_ok=True)
    cache = _cache_dir(cfg)
    try:
        for path in stale_temp_files(cache, older_than_s=3600) if cache.is_dir() else []:
            path.unlink(missing_ok=True)  # only old ones: another run may be writing the cache right now
    except OSError:
        pass  # the cache is an optimisation; a folder we may not clean is not an error
    if cfg.overwrite and out.is_dir():
        remove_earlier_run(cfg, out)


def remove_earlier_run(cfg: RunConfig, out: Path) -> list[Path]:
    """Removes what runs write in ``out`` — :data:`RUN_FILES`, and in every stage folder (a subfolder holding one of
    :data:`STAGE_FILES`) those files and its TensorBoard logs, then the folder when it is left empty — except an
    input of this run (``--teacher``, ``--data-dir``, ``--cache-dir``) or a folder holding one, which is kept. Files
    runs do not write stay. Returns what was removed."""
    keep = _inputs(cfg)
    removed = []
    stages = [d for d in sorted(out.iterdir()) if d.is_dir() and not d.is_symlink()
              and any((d / name).is_file() for name in STAGE_FILES)]
    candidates = [out / name for name in RUN_FILES]
    candidates += [d / name for d in stages for name in (*STAGE_FILES, STAGE_LOGS)]
    for path in candidates:
        if not (path.is_file() or path.is_dir()) or any(k == path.resolve() or path.resolve() in k.parents
                                                        for k in keep):
            continue  # missing, an input, or a folder holding one
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(path)
    for d in stages:
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    return removed


def _inputs(cfg: RunConfig) -> list[Path]:
    """The files and folders this run reads (resolved), which ``--overwrite`` must not remove."""
    named = [*(getattr(cfg, "teacher", None) or ()), cfg.data_dir, cfg.cache_dir]  # --teacher: one or more files
    return [Path(p).resolve() for p in named if p]
