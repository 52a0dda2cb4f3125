"""Packs an image folder of small JPEGs into one file a third of its size, losslessly, and unpacks it.

Every JPEG starts with headers (quantisation and Huffman tables, up to the end of its start-of-scan segment) that an
encoder writes identically for images of one size and quality: 623 of the ~920 bytes of each CIFAR-10 JPEG here. The
pack keeps each distinct header once and each file's remaining bytes, so ``../shared/data/cifar10`` (55 MB of
file bytes, 236 MB on disk in 60,000 files) becomes one 19 MB file that travels to a GPU machine. Unpacking writes
byte-identical files and checks one sha256 over all of them.

    python benchmarks/jpeg_pack.py pack ../shared/data/cifar10 .devdata/cifar10.npz
    python benchmarks/jpeg_pack.py unpack .devdata/cifar10.npz /tmp/cifar10
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

SOS = b"\xff\xda"  # start of scan: the compressed data follows its segment


def split_header(data: bytes) -> int:
    """Length of ``data``'s header: through the end of the start-of-scan segment, or 0 when there is none."""
    i = data.find(SOS)
    if i < 0 or i + 4 > len(data):
        return 0
    return i + 2 + int.from_bytes(data[i + 2:i + 4], "big")


def pack(src: Path, dst: Path) -> dict:
    """Writes every file under ``src`` (sorted relative paths) to the ``.npz`` file ``dst``; returns its summary."""
    files = sorted(p for p in src.rglob("*") if p.is_file())
    headers: dict[bytes, int] = {}
    which, bodies, digest = [], [], hashlib.sha256()
    for path in files:
        data = path.read_bytes()
        digest.update(data)
        cut = split_header(data)
        which.append(headers.setdefault(data[:cut], len(headers)))
        bodies.append(data[cut:])
    header_list = sorted(headers, key=headers.get)
    index = {"paths": [p.relative_to(src).as_posix() for p in files], "sha256": digest.hexdigest(),
             "header_sizes": [len(h) for h in header_list]}
    np.savez(dst, index=np.frombuffer(json.dumps(index).encode(), np.uint8),
             headers=np.frombuffer(b"".join(header_list) or b"\0", np.uint8), which=np.asarray(which, np.int32),
             sizes=np.asarray([len(b) for b in bodies], np.int64), blob=np.frombuffer(b"".join(bodies) or b"\0",
                                                                                      np.uint8))
    return {"files": len(files), "headers": len(header_list), "bytes": dst.stat().st_size}


def unpack(src: Path, dst: Path) -> dict:
    """Writes the files of the pack ``src`` under ``dst``; raises ValueError when their sha256 differs."""
    with np.load(src) as z:
        index = json.loads(z["index"].tobytes())
        header_bytes, which, sizes, blob = z["headers"].tobytes(), z["which"], z["sizes"], z["blob"].tobytes()
    starts = np.concatenate([[0], np.cumsum(index["header_sizes"])])
    headers = [header_bytes[a:b] for a, b in zip(starts[:-1], starts[1:])]
    ends = np.cumsum(sizes)
    digest = hashlib.sha256()
    for rel, h, end, size in zip(index["paths"], which, ends, sizes):
        data = headers[h] + blob[end - size:end]
        digest.update(data)
        out = dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
    if digest.hexdigest() != index["sha256"]:
        raise ValueError(f"{src}: unpacked files differ from the packed ones (sha256 mismatch)")
    return {"files": len(index["paths"]), "sha256": index["sha256"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("pack", "unpack"))
    parser.add_argument("src", type=Path, help="pack: the image folder; unpack: the .npz pack")
    parser.add_argument("dst", type=Path, help="pack: the .npz to write; unpack: the folder to write into")
    args = parser.parse_args(argv)
    print(json.dumps((pack if args.action == "pack" else unpack)(args.src, args.dst)))


if __name__ == "__main__":
    sys.exit(main())
