"""Packs an image folder of small JPEGs into one file a third of its size, losslessly, and unpacks it.

The format is :mod:`kd.data.pack`'s (the one ``--dataset cifar10-jpeg`` ships in): each distinct JPEG header once,
each file's remaining bytes, one sha256 over every file. ``../shared/data/cifar10`` (55 MB of file bytes, 236 MB on
disk in 60,000 files) becomes one 20 MB file that travels to a GPU machine. Unpacking checks the whole pack (sizes,
paths inside the target, sha256) before it writes anything, writes into a fresh folder and renames it into place;
a non-empty target is refused unless ``--replace``.

    python benchmarks/jpeg_pack.py pack ../shared/data/cifar10 .devdata/cifar10.npz
    python benchmarks/jpeg_pack.py unpack .devdata/cifar10.npz /tmp/cifar10
    python benchmarks/jpeg_pack.py check kd/data/files/cifar10-jpeg.npz

Every bad argument or file ends in one line, ``error: ...``, and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's packages, run from anywhere

from kd.data.pack import PackError, read_pack, unpack, write_pack  # noqa: E402


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (--help lists the options)\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("pack", "unpack", "check"))
    parser.add_argument("src", type=Path, help="pack: the image folder; unpack, check: the .npz pack")
    parser.add_argument("dst", type=Path, nargs="?", help="pack: the .npz to write; unpack: the folder to write into")
    parser.add_argument("--replace", action="store_true", help="unpack: replace a non-empty destination folder")
    args = parser.parse_args(argv)
    if args.action != "check" and args.dst is None:
        parser.error(f"{args.action} needs a destination")
    try:
        if args.action == "pack":
            summary = write_pack(args.src, args.dst)
        elif args.action == "unpack":
            summary = unpack(args.src, args.dst, replace=args.replace)
        else:
            pack = read_pack(args.src)
            summary = {"files": len(pack), "sha256": pack.sha256}
    except (PackError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
