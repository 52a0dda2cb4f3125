"""Teacher-output cache: run the teacher once over K augmented views of every training image, then never again.

In the spirit of FKD / ReLabel (Shen & Xing 2022; Yun et al. 2021) and of "a good teacher is patient and consistent"
(Beyer et al. 2022): the student must see the very view the teacher scored, so the cache keeps the augmentation
(crop offsets and flip) beside the logits. Each epoch, every training image is served as one of its K views, picked
at random, with exactly that augmentation applied and its stored teacher logits, so a distillation epoch costs only
the student's forward and backward passes.

Storage per view and image: 3 bytes of augmentation and the logits in fp16 (2·C bytes), or, for many classes, the
top-k logits (fp16) with their class indices and the log-sum-exp of all C logits, from which the full distribution is
rebuilt with the top-k probabilities exact and the remaining mass spread evenly (:meth:`TeacherCache.logits_for`).
The cache is written atomically under a key of teacher weights + images + labels + normalisation + augmentation + K +
seed + top-k + precision, so any run — another recipe, another student, another seed of the comparison — that asks
for the same teacher outputs reuses it. A cache folder that cannot be written only costs the reuse (a warning).
"""
from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kd.data.batches import BatchIterator, apply_crop_flip, draw_crop_flip
from kd.data.sources import default_cache_dir
from kd.distributed import shard
from kd.precision import Hardware, autocast
from kd.progress import progress_bar
from models.checkpoint import atomic_save
from models.common import eval_mode

CACHE_FORMAT = 1
FULL_LOGITS_MAX_CLASSES = 100  # above this many classes only the top-k logits are kept by default
DEFAULT_TOPK = 20


@dataclass
class TeacherCache:
    """K augmented views of N images with the teacher's logits for each.

    Attributes:
        augment: (K, N, 3) uint8 rows ``(oy, ox, flip)`` for :func:`kd.data.apply_crop_flip`.
        pad: crop padding the offsets refer to.
        num_classes: C.
        logits: (K, N, C) fp16 full logits, or None when only the top-k are kept.
        topk_values, topk_indices: (K, N, k) fp16 logits and int64 classes of the k largest logits (top-k mode).
        logsumexp: (K, N) fp32 log-sum-exp of all C logits (top-k mode).
        key: the cache key (hex), seconds: build time of the teacher passes.
    """

    augment: torch.Tensor
    pad: int
    num_classes: int
    logits: torch.Tensor | None = None
    topk_values: torch.Tensor | None = None
    topk_indices: torch.Tensor | None = None
    logsumexp: torch.Tensor | None = None
    key: str = ""
    seconds: float = 0.0

    @property
    def views(self) -> int:
        return int(self.augment.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of the stored tensors."""
        tensors = (self.augment, self.logits, self.topk_values, self.topk_indices, self.logsumexp)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def logits_for(self, view: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Teacher logits (B, C) float32 of images ``index`` (B,) seen as views ``view`` (B,).

        Top-k mode rebuilds logits whose softmax gives each stored class its exact teacher probability and every
        other class ``(1 − Σ top-k p) / (C − k)``: ``z_j = log((1 − Σ_i exp(v_i − lse)) / (C − k)) + lse``.
        """
        if self.logits is not None:
            return self.logits[view, index].float()
        values = self.topk_values[view, index].float()  # (B, k)
        lse = self.logsumexp[view, index].float()[:, None]  # (B, 1)
        k = values.shape[1]
        rest = (1 - torch.exp(values - lse).sum(1, keepdim=True)).clamp_min(1e-12)  # (B, 1) mass off the top-k
        fill = torch.log(rest / max(self.num_classes - k, 1)) + lse  # (B, 1)
        out = fill.expand(-1, self.num_classes).clone()  # (B, C)
        out.scatter_(1, self.topk_indices[view, index], values)
        return out

    def to(self, device: str | torch.device) -> "TeacherCache":
        """The cache with its tensors on ``device``."""
        moved = {name: getattr(self, name).to(device) if getattr(self, name) is not None else None
                 for name in ("augment", "logits", "topk_values", "topk_indices", "logsumexp")}
        return TeacherCache(pad=self.pad, num_classes=self.num_classes, key=self.key, seconds=self.seconds, **moved)

    def state_dict(self) -> dict[str, Any]:
        return {"format": CACHE_FORMAT, "pad": self.pad, "num_classes": self.num_classes, "key": self.key,
                "seconds": self.seconds, "augment": self.augment, "logits": self.logits,
                "topk_values": self.topk_values, "topk_indices": self.topk_indices, "logsumexp": self.logsumexp}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "TeacherCache":
        if state.get("format") != CACHE_FORMAT:
            raise ValueError(f"teacher cache format {state.get('format')!r} is not {CACHE_FORMAT}")
        return cls(**{k: v for k, v in state.items() if k != "format"})


def cache_key(teacher: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, mean: Sequence[float],
              std: Sequence[float], pad: int, views: int, seed: int, topk: int | None, precision: str) -> str:
    """SHA-256 (hex) of everything the cached outputs depend on."""
    h = hashlib.sha256()
    h.update(repr((CACHE_FORMAT, [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std], pad, views,
                   seed, topk, precision)).encode())
    for name, tensor in teacher.state_dict().items():
        h.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        h.update(_tensor_bytes(tensor))
    h.update(_tensor_bytes(images))
    h.update(_tensor_bytes(labels))
    return h.hexdigest()


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


@torch.inference_mode()
def build_teacher_cache(teacher: nn.Module, images: torch.Tensor, *, views: int, mean: Sequence[float],
                        std: Sequence[float], pad: int = 4, seed: int = 0, topk: int | None = None,
                        batch_size: int = 256, device: str | torch.device = "cpu", precision: str = "auto",
                        progress: bool = True, on_view: Callable[[int, int, float], None] | None = None
                        ) -> TeacherCache:
    """Runs ``teacher`` (eval mode) over ``views`` augmented views of every image of ``images`` (N, 3, H, W) uint8.

    The augmentation of view k of image i is drawn up front from a generator seeded with ``seed``; the teacher sees
    ``(crop_flip(x) / 255 − mean) / std``, exactly what :class:`CachedBatchIterator` later gives the student.

    Args:
        topk: keep only the k largest logits per view (None: all logits up to ``FULL_LOGITS_MAX_CLASSES`` classes,
            else the top ``DEFAULT_TOPK``; 0: all logits).
        precision: the teacher's forward precision (``auto`` follows :mod:`kd.precision`).
        on_view: called as ``on_view(done, views, seconds)`` after each finished view (a log line where no progress
            bar is drawn: the build is ``views`` teacher passes over the training set).
    """
    if views < 1:
        raise ValueError(f"a teacher cache needs at least 1 view per image, got {views}")
    device = torch.device(device)
    hw = Hardware.detect(precision, device)
    n = images.shape[0]
    gen = torch.Generator().manual_seed(seed)
    augment = torch.stack([draw_crop_flip(n, pad, gen) for _ in range(views)]).to(torch.uint8)  # (K, N, 3)
    if pad == 0:
        augment[..., 2] = 0  # as BatchIterator: pad 0 switches the whole augmentation off, the flip too
    mean_t = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, -1, 1, 1)
    chunks: list[list[torch.Tensor]] = [[] for _ in range(views)]
    start = time.perf_counter()
    steps = [(k, i) for k in range(views) for i in range(0, n, batch_size)]
    with eval_mode(teacher):
        for k, i in progress_bar(steps, desc="teacher cache", enabled=progress, leave=False, unit="batch"):
            x = apply_crop_flip(images[i:i + batch_size].to(device), pad, augment[k, i:i + batch_size].long())
            x = (x.float().div_(255) - mean_t) / std_t
            if hw.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(hw.precision, device):
                chunks[k].append(teacher(x).float().cpu())  # (B, C)
            if on_view is not None and i + batch_size >= n:
                on_view(k + 1, views, time.perf_counter() - start)
    logits = torch.stack([torch.cat(c) for c in chunks])  # (K, N, C) fp32
    cache = _pack(logits, augment, pad, topk)
    cache.seconds = time.perf_counter() - start
    return cache


def _pack(logits: torch.Tensor, augment: torch.Tensor, pad: int, topk: int | None) -> TeacherCache:
    c = logits.shape[-1]
    if topk is None:
        topk = 0 if c <= FULL_LOGITS_MAX_CLASSES else DEFAULT_TOPK
    if topk <= 0 or topk >= c:
        return TeacherCache(augment, pad, c, logits=logits.half())
    values, indices = logits.topk(topk, dim=-1)  # (K, N, k)
    return TeacherCache(augment, pad, c, topk_values=values.half(), topk_indices=indices,
                        logsumexp=torch.logsumexp(logits, dim=-1))


def load_or_build(teacher: nn.Module, train: BatchIterator, views: int, *, cache_dir: str | Path | None = None,
                  seed: int = 0, topk: int | None = None, precision: str = "auto", progress: bool = True,
                  on_view: Callable[[int, int, float], None] | None = None) -> tuple[TeacherCache, bool]:
    """The cache for ``teacher`` over ``train``'s images, augmentation and normalisation: read from ``cache_dir``
    (default: ``kd.data.default_cache_dir()/teacher-logits``) when a matching one is there, else built and written
    atomically. Returns ``(cache, reused)``. An unwritable folder only costs the reuse: a warning, and the cache is
    kept in memory for this run. ``on_view``: see :func:`build_teacher_cache`.
    """
    mean, std = train.mean.flatten().tolist(), train.std.flatten().tolist()
    if not isinstance(train.images, torch.Tensor):
        raise ValueError("--teacher-cache replays views of images held in memory; pass --data-mode memory (or drop "
                         "--teacher-cache to run the teacher on streamed batches)")
    hw = Hardware.detect(precision, train.device)
    key = cache_key(teacher, train.images, train.labels, mean=mean, std=std, pad=train.pad, views=views, seed=seed,
                    topk=topk, precision=hw.precision)
    path = Path(cache_dir or default_cache_dir() / "teacher-logits") / f"{key[:32]}.pt"
    if path.is_file():
        try:
            cache = TeacherCache.from_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            if cache.key == key:
                return cache, True
        except (OSError, RuntimeError, ValueError, TypeError, KeyError) as err:
            warnings.warn(f"teacher cache {path} is unreadable ({type(err).__name__}); rebuilding it", stacklevel=2)
    cache = build_teacher_cache(teacher, train.images, views=views, mean=mean, std=std, pad=train.pad, seed=seed,
                                topk=topk, device=train.device, precision=precision, progress=progress,
                                on_view=on_view)
    cache.key = key
    try:
        atomic_save(cache.state_dict(), path)
    except OSError as err:
        warnings.warn(f"could not write the teacher cache to {path} ({err.strerror or err}); it is kept in memory "
                      f"for this run only", stacklevel=2)
    return cache, False


class CachedBatchIterator:
    """Training batches ``(x, y, teacher_logits)`` replayed from a :class:`TeacherCache`.

    Per epoch: shuffle the images, pick one of the K views of each at random, apply exactly that view's crop and flip,
    normalise, and hand over the stored teacher logits (B, C) float32. Shuffle and view picks come from ``base``'s
    generator, so ``state_dict`` / ``load_state_dict`` resume it exactly as they resume a :class:`BatchIterator`.

    Args:
        cache: built over ``base.images`` in order (:func:`load_or_build`).
        base: the training :class:`BatchIterator` it replaces (images, labels, batch size, normalisation, device).
    """

    def __init__(self, cache: TeacherCache, base: BatchIterator) -> None:
        if cache.augment.shape[1] != base.num_samples:
            raise ValueError(f"the teacher cache holds {cache.augment.shape[1]} images but the training split has "
                             f"{base.num_samples}")
        self.cache, self.base = cache.to(base.device), base
        self.classes, self.batch_size = base.classes, base.batch_size

    def __len__(self) -> int:
        return len(self.base)

    @property
    def world_size(self) -> int:
        return self.base.world_size

    def shard(self, rank: int, world_size: int) -> "CachedBatchIterator":
        """This iterator for ``rank`` of ``world_size`` processes: the same global shuffle and view picks on every
        rank, each keeping its slice of each global batch (see :meth:`kd.data.BatchIterator.shard`)."""
        return CachedBatchIterator(self.cache, self.base.shard(rank, world_size))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        base, n = self.base, self.base.num_samples
        order = torch.randperm(n, generator=base.generator)
        view = torch.randint(0, self.cache.views, (n,), generator=base.generator)
        for i in range(len(self)):
            idx = order[i * base.batch_size:(i + 1) * base.batch_size]
            if base.world_size > 1:
                idx = shard(idx, base.rank, base.world_size)
            idx = idx.to(base.device)
            v = view[idx.cpu()].to(base.device)
            x = apply_crop_flip(base.images[idx], self.cache.pad, self.cache.augment[v, idx].long())
            yield base.normalize(x), base.labels[idx], self.cache.logits_for(v, idx)

    def state_dict(self) -> dict[str, Any]:
        return self.base.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state)
