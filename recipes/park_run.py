"""Hold a run between sittings: copy its --out folder into a folder you commit, and back before --resume.

    python recipes/park_run.py park runs/teacher benchmarks/checkpoints/teacher --command "python recipes/..."
    python recipes/park_run.py unpark benchmarks/checkpoints/teacher runs/teacher
    bash benchmarks/checkpoints/teacher/command.sh --resume

park copies every file of the run except best.pt and the lock, splits files above --part-mb MB (a checkpoint with its
optimizer state) into NAME.part00, NAME.part01, ... and writes parked.json with each file's size and sha256 and each
stage's last and best epoch (from its metrics.csv, said again on unpark), and, with --command, command.sh. unpark joins
the parts, checks every file against parked.json before writing any, and refuses to replace a file of the run that holds
other content unless --overwrite. Stop a run (Ctrl-C, once an epoch's checkpoint is written) before parking it: a folder
a run is writing into is refused.
"""
from __future__ import annotations

import recipes.plumbing.signals  # noqa: F401,I001 (first: Ctrl-C while torch loads is one line)
import argparse

from recipes.plumbing.config import OneLineParser
from recipes.plumbing.errors import run_main
from recipes.plumbing.parking import MANIFEST, PART_BYTES, describe_progress, park, read_manifest, unpark


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", required=True, parser_class=OneLineParser)
    to_park = actions.add_parser("park", help="copy a run folder into a folder to commit")
    to_park.add_argument("run_dir", help="the run's --out folder (stopped)")
    to_park.add_argument("dest", help="a new or empty folder, or one parked before (its files are replaced)")
    to_park.add_argument("--command", help="the command that started the run, written to DEST/command.sh so that "
                         "`bash DEST/command.sh --resume` continues it")
    to_park.add_argument("--part-mb", type=float, default=PART_BYTES / 1e6,
                         help="files above this many MB (10^6 bytes) are stored in parts of this size (default: "
                         "%(default)s, under a 20 MB limit per committed file)")
    to_unpark = actions.add_parser("unpark", help="copy a parked run back, checking every file")
    to_unpark.add_argument("dest", help=f"the parked folder (holds {MANIFEST})")
    to_unpark.add_argument("run_dir", help="the run's --out folder to restore (created when missing)")
    to_unpark.add_argument("--overwrite", action="store_true",
                           help="replace files of RUN_DIR whose content differs from the parked ones")
    args = parser.parse_args(argv)
    if args.action == "park" and not args.part_mb > 0:
        parser.error(f"--part-mb must be positive, got {args.part_mb}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.action == "park":
        manifest = park(args.run_dir, args.dest, int(args.part_mb * 1e6), args.command)
        files = manifest["files"]
        split = sum(1 for entry in files.values() if entry.get("parts"))
        total = sum(entry["bytes"] for entry in files.values())
        print(f"parked {len(files)} files ({total / 1e6:.1f} MB; {split} in parts) from {args.run_dir} into "
              f"{args.dest} ({MANIFEST} lists them with their sha256): {describe_progress(manifest['progress'])}")
    else:
        written = unpark(args.dest, args.run_dir, overwrite=args.overwrite)
        stages = read_manifest(args.dest).get("progress")
        print(f"unparked {len(written)} files into {args.run_dir}, each matching its sha256"
              + (f", parked {describe_progress(stages)}" if stages else "")
              + "; continue the run with its command and --resume")


if __name__ == "__main__":
    run_main(main)
