"""Mixup and CutMix of whole training batches with timm's :class:`timm.data.Mixup`, as a wrapper of any batch source.

The wrapper mixes ``x`` and turns the labels into soft targets before the Trainer sees the batch, so a teacher run by
the Trainer scores the very images the student is trained on: the consistent views of function matching (Beyer et
al., "Knowledge distillation: A good teacher is patient and consistent", CVPR 2022). Mixup (Zhang et al., ICLR 2018)
with ``λ ~ Beta(α, α)``: ``x' = λ·x + (1 − λ)·x.flip(0)``; CutMix (Yun et al., ICCV 2019) pastes a box of
``x.flip(0)`` covering ``1 − λ`` of the image. Targets ``y' = λ·s(y) + (1 − λ)·s(y.flip(0))``, ``s`` the one-hot
vector smoothed by ε (``(1 − ε)·onehot + ε/K``): label smoothing is folded into the soft target, as timm does, and
the losses apply no second smoothing to soft targets (:func:`kd.losses.cross_entropy`).

timm draws λ from NumPy's global generator; the wrapper gives it a stream of its own (seeded, swapped in around each
call and saved by ``state_dict``), so the random state of the rest of the run is untouched and ``--resume`` replays
the same λ.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from timm.data import Mixup


def make_mixup(num_classes: int, *, mixup: float = 0.0, cutmix: float = 0.0, prob: float = 1.0,
               switch_prob: float = 0.5, label_smoothing: float = 0.0) -> Mixup | None:
    """timm's ``Mixup`` in ``batch`` mode (one λ per batch), or None when both α are 0 (no mixing).

    Args:
        num_classes: K, the width of the soft targets (B, K).
        mixup, cutmix: the Beta(α, α) parameters of mixup and CutMix (timm's ``--mixup`` / ``--cutmix``); 0 = off.
        prob: probability that a batch is mixed at all (``--mixup-prob``).
        switch_prob: probability of CutMix instead of mixup when both are on (``--mixup-switch-prob``).
        label_smoothing: ε folded into the soft targets.
    """
    if mixup <= 0 and cutmix <= 0:
        return None
    return Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, prob=prob, switch_prob=switch_prob, mode="batch",
                 label_smoothing=label_smoothing, num_classes=num_classes)


class MixedBatches:
    """Yields ``(x', y')`` from ``base``'s ``(x, y)``: x' (B, C, H, W) mixed, y' (B, K) float soft targets.

    Everything else (``len``, ``shard``, ``world_size``, ``num_samples``, ``classes`` ...) is ``base``'s; the
    resumable state is ``base``'s plus the wrapper's NumPy stream. A batch of odd size cannot be paired with its
    mirror (timm's rule) and is refused.

    Args:
        base: a training batch source yielding ``(x, y)`` with integer labels y (B,).
        mixup: from :func:`make_mixup`.
        seed: seeds the NumPy stream λ is drawn from.
    """

    def __init__(self, base: Any, mixup: Mixup, seed: int = 0) -> None:
        self.base, self.mixup, self.seed = base, mixup, seed
        self._numpy_state = np.random.RandomState(seed).get_state()

    def __len__(self) -> int:
        return len(self.base)

    def __getattr__(self, name: str) -> Any:
        if name == "base":  # not set yet (copy / unpickling): never recurse
            raise AttributeError(name)
        return getattr(self.base, name)

    def shard(self, rank: int, world_size: int) -> "MixedBatches":
        """``base``'s view for ``rank``; each rank mixes its own slice with a stream seeded by its rank."""
        return MixedBatches(self.base.shard(rank, world_size), self.mixup, self.seed + rank)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.base:
            x, y = batch[0], batch[1]
            if len(batch) > 2:
                raise ValueError("mixup needs the teacher to score the mixed images; batches with cached teacher "
                                 "logits cannot be mixed")
            if x.shape[0] % 2:
                raise ValueError(f"mixup and cutmix pair each image with the mirrored batch and need an even batch, "
                                 f"got {x.shape[0]} images")
            with self._numpy_stream():
                x, y = self.mixup(x.clone(), y)  # (B, C, H, W), (B, K)
            yield x, y

    @contextlib.contextmanager
    def _numpy_stream(self) -> Iterator[None]:
        """NumPy's global generator set to this wrapper's state inside the block, and given back afterwards."""
        outer = np.random.get_state()
        np.random.set_state(self._numpy_state)
        try:
            yield
        finally:
            self._numpy_state = np.random.get_state()
            np.random.set_state(outer)

    def state_dict(self) -> dict[str, Any]:
        state = dict(self.base.state_dict()) if hasattr(self.base, "state_dict") else {}
        name, keys, pos, has_gauss, cached = self._numpy_state
        state["mixup_numpy"] = {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                                "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if hasattr(self.base, "load_state_dict"):
            self.base.load_state_dict({k: v for k, v in state.items() if k != "mixup_numpy"})
        saved = state.get("mixup_numpy")
        if saved is not None:
            keys = saved["keys"].numpy().astype(np.uint32)
            self._numpy_state = ("MT19937", keys, saved["pos"], saved["has_gauss"], saved["cached_gaussian"])
