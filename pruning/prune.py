"""``prune``: structured channel pruning with Torch-Pruning to a FLOPs target, a parameter target or a ratio.

How a target is reached. Channel importance is scored once on the input model (``pruning.importance``). A pruning
ratio ``r`` then fixes how many channels each dependency group loses: ``r`` of its channels (local pruning, the
default) or the channels under one threshold that removes ``r`` of all prunable channels (``global_pruning``); every
group keeps at least one channel (``round_to`` channels when given). Torch-Pruning's ``BasePruner`` prunes a copy of
the model with these per-group counts (``pruning_ratio_dict``), the copy is profiled with :func:`models.profile`, and a
search over ``r`` (:mod:`pruning.search`: interpolation on √FLOPs, safeguarded by bisection) keeps the least
pruned copy at or below the target, stopping once it is within ``tolerance`` of it. Counts only grow with ``r``, so
FLOPs and parameters only fall, and ``r = 1`` — every group at its minimum — is the smallest reachable model.
"""
from __future__ import annotations

import copy
import itertools
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from models.common import Batches, num_threads
from models.heads import classifier_name
from models.profile import Complexity, profile
from pruning.failures import check_forward, traced
from pruning.importance import calibrate, calibrated_names, clear_calibration, make_importance, needs_calibration
from pruning.fitting import recalibrate_bn as recalibrate
from pruning.passthrough import TorchPruningOptions, sync_attention
from pruning.search import Trial, UnreachableTarget, find_ratio
from pruning.units import Unit, find_units

_PRUNABLE = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass
class PruneStep:
    """One pruned copy tried by the target search: the ratio and the copy's FLOPs (thop MACs) and parameters."""

    ratio: float
    flops: int
    params: int


@dataclass
class PruneResult:
    """The pruned model and what pruning did.

    model: the pruned model (the input model itself when ``inplace=True``), in the input's train/eval mode.
    before, after: complexity of the input and of the pruned model for one input of ``example_inputs``' size.
    kept: for every conv and linear layer, the indices (input model numbering, sorted) of the output channels it
        kept; an unpruned layer keeps ``range(C)``. ``kept[name][j]`` is the original channel of new channel ``j``.
    channels: for every conv and linear layer, (output channels before, after).
    ratio: the pruning ratio applied (0 when the input already met the target).
    importance: the criterion's name.
    steps: the copies tried by the target search, in order (one for ``ratio=``).
    """

    model: nn.Module
    before: Complexity
    after: Complexity
    kept: dict[str, list[int]]
    channels: dict[str, tuple[int, int]]
    ratio: float
    importance: str
    steps: list[PruneStep] = field(default_factory=list)

    def pruned_layers(self) -> dict[str, tuple[int, int]]:
        """``{layer: (channels before, after)}`` for the layers that lost output channels."""
        return {name: c for name, c in self.channels.items() if c[1] < c[0]}

    def gutted_layers(self, removed: float = 0.95) -> dict[str, tuple[int, int]]:
        """``{layer: (before, after)}`` of the layers that lost more than ``removed`` of their output channels
        (``after < (1 − removed)·before``): a target too far below the network, e.g. an absolute FLOPs budget of
        32-px images applied at 224 px."""
        return {name: c for name, c in self.channels.items() if c[1] < (1.0 - removed) * c[0]}


def prune(model: nn.Module, example_inputs: torch.Tensor, *, target_flops: int | None = None,
          target_params: int | None = None, ratio: float | None = None, importance: str | Any = "l1",
          global_pruning: bool = False, ignored_layers: Sequence[nn.Module | str] | None = None,
          round_to: int | None = None, inplace: bool = False, calibration: Batches | None = None,
          calibration_batches: int = 16, recalibrate_bn: bool = True, tolerance: float = 0.02,
          seed: int = 0, num_heads: Mapping[nn.Module | str, int] | None = None,
          unwrapped_parameters: Mapping[nn.Parameter | str, int] | None = None,
          customized_pruners: Mapping[type | nn.Module | str, Any] | None = None,
          pruning_ratio_dict: Mapping[nn.Module | str, float] | None = None) -> PruneResult:
    """Prunes output channels of the conv and linear layers of ``model`` with Torch-Pruning.

    Args:
        model: any CNN Torch-Pruning can trace (the registry models, timm CNNs); not changed unless ``inplace``.
        example_inputs: a batch like the model's inputs (B, C, H, W), on the model's device; complexity is counted
            for one input of that size.
        target_flops: prune until FLOPs (thop MACs, as :func:`models.profile`) are at or below this, within
            ``tolerance`` of it where channel granularity allows.
        target_params: the same for the number of parameters.
        ratio: fraction of channels removed from each prunable group (Torch-Pruning's ``pruning_ratio``), in [0, 1).
        importance: a name from :data:`pruning.IMPORTANCES` (``l1`` = group L1 magnitude) or a Torch-Pruning
            importance object.
        global_pruning: rank channels across all layers instead of within each layer.
        ignored_layers: layers (modules of ``model`` or dotted names) whose output channels stay; the final
            classifier (``get_classifier()``, else the last linear layer) is always kept.
        round_to: keep channel counts multiples of this.
        inplace: prune ``model`` itself (Torch-Pruning changes modules in place) instead of a deep copy; its
            ``.grad`` are cleared.
        calibration: ``(x, y)`` batches for ``taylor`` (cross-entropy gradients) and ``activation`` (mean |a|).
        calibration_batches: how many calibration batches are read at most.
        recalibrate_bn: with ``calibration``, re-estimate every BatchNorm's running statistics of the pruned model on
            those batches (forward passes, no gradients; :func:`pruning.fitting.recalibrate_bn`): the statistics
            the teacher collected describe channels that pruning removed or rescaled, and evaluating with them
            measures a stale-statistics artefact rather than the pruned network.
        tolerance: a FLOPs/params target counts as reached within ``[target · (1 − tolerance), target]``.
        seed: seeds the ``random`` criterion.
        num_heads: Torch-Pruning's ``num_heads``: ``{qkv projection: heads}`` of each multi-head attention layer, so
            that a head's channels are pruned alike in every head (head dims shrink, the number of heads stays).
            None finds them as Torch-Pruning's timm example does: every module with an integer ``num_heads`` and a
            ``qkv`` (or ``qkv_proj``) linear layer; after pruning its ``head_dim`` (and timm's ``attn_dim``) is
            set to ``qkv.out_features // (3 · num_heads)``.
        unwrapped_parameters: Torch-Pruning's ``unwrapped_parameters``: ``{parameter (or its dotted name): pruned
            dim}`` for parameters used outside a layer (a ViT's ``pos_embed`` and ``cls_token``: dim 2).
        customized_pruners: Torch-Pruning's ``customized_pruners``: ``{layer class or layer: BasePruningFunc}`` for
            layers it does not know.
        pruning_ratio_dict: per-layer ratios ``{layer: ratio in [0, 1)}``: the group rooted at that layer loses that
            fraction of its channels whatever the search's ratio (Torch-Pruning's ``pruning_ratio_dict``).

    Returns:
        A :class:`PruneResult`.

    Raises:
        ValueError: not exactly one of the three targets, a bad value, a missing calibration set, or a target
            below the smallest reachable value (the message gives that value).
        PruningError: Torch-Pruning cannot trace the network, or the pruned network fails (a layer it does not
            know how to prune): the message names the layer.
    """
    kind, target = _check_target(target_flops, target_params, ratio, tolerance, round_to)
    name, imp = make_importance(importance, seed)
    if needs_calibration(imp) and calibration is None:
        raise ValueError(f"importance={name!r} needs calibration batches: pass calibration=<iterable of (x, y)> "
                         f"(criteria that need them: {', '.join(calibrated_names())})")
    input_size = (1, *example_inputs.shape[1:])
    was_training = model.training
    trainable = {n: p.requires_grad for n, p in model.named_parameters()}
    work = model if inplace else copy.deepcopy(model)
    work.eval()  # BatchNorm in train mode fails on 1×1 maps of a batch of one during tracing
    work.requires_grad_(True)  # Torch-Pruning traces the autograd graph: a frozen model (a teacher) has none
    try:
        ignored = _ignored_names(model, ignored_layers) | {classifier_name(model)}
        options = TorchPruningOptions.named(model, num_heads, unwrapped_parameters, customized_pruners,
                                            pruning_ratio_dict)
        if needs_calibration(imp):
            calibrate(imp, work, calibration, calibration_batches)
        # tracing, pruning and profiling run thousands of tiny ops on one or two images: extra intra-op threads only
        # add overhead (ten times slower on a busy two-core machine)
        with num_threads(1):
            plan = traced(work, example_inputs, lambda: _Plan(work, example_inputs, imp, ignored, global_pruning,
                                                              round_to or 1, options))
            before = profile(work, input_size)
            if kind == "ratio":
                pruned, steps = (work if inplace else _copy(work)), []
                kept, r = plan.apply(pruned, target), target
            else:
                pruned, kept, r, steps = _search(plan, work, kind, int(target), before, input_size, tolerance)
                if inplace and pruned is not work:
                    kept, pruned = plan.apply(work, r), work  # same counts and scores: the same channels
            after = profile(pruned, input_size)
            if kind == "ratio":
                steps.append(PruneStep(r, after.flops, after.params))
    finally:
        _restore(work, was_training, trainable)  # also when pruning fails: an inplace model comes back as it was
    _restore(pruned, was_training, trainable)
    channels = {n: (plan.widths[n], len(k)) for n, k in kept.items()}
    if all(new == old for old, new in channels.values()):
        why = (f"ratio={target} removes no channel" if kind == "ratio" else
               f"the model has {getattr(before, kind):,} {kind}, already within target_{kind}={int(target):,}")
        warnings.warn(f"nothing was pruned: {why}; the result is an unpruned copy", stacklevel=2)
    elif recalibrate_bn and calibration is not None:
        recalibrate(pruned, itertools.islice(calibration, calibration_batches), example_inputs.device)
    return PruneResult(pruned, before, after, kept, channels, r, name, steps)


def smallest_reachable(model: nn.Module, example_inputs: torch.Tensor, *, round_to: int | None = None,
                       ignored_layers: Sequence[nn.Module | str] | None = None) -> Complexity:
    """The complexity of ``model`` with every prunable group cut to its minimum (one channel, ``round_to`` when
    given): the floor under which no ``target_flops`` / ``target_params`` of :func:`prune` can be met. ``model`` is
    not changed; nothing is trained or calibrated, so a caller can check a target before any work."""
    work = copy.deepcopy(model).eval()
    work.requires_grad_(True)  # Torch-Pruning traces the autograd graph
    ignored = _ignored_names(model, ignored_layers) | {classifier_name(model)}
    with num_threads(1):
        plan = traced(work, example_inputs, lambda: _Plan(work, example_inputs, make_importance("l1", 0)[1], ignored,
                                                          False, round_to or 1, TorchPruningOptions.named(model)))
        plan.apply(work, 1.0)
        return profile(work, (1, *example_inputs.shape[1:]))


def _restore(model: nn.Module, training: bool, trainable: dict[str, bool]) -> None:
    """Removes calibration state and gives back the input's train/eval mode and ``requires_grad`` flags."""
    clear_calibration(model)
    model.train(training)
    for n, p in model.named_parameters():
        p.requires_grad_(trainable.get(n, True))


def _check_target(target_flops: int | None, target_params: int | None, ratio: float | None, tolerance: float,
                  round_to: int | None) -> tuple[str, float]:
    given = {k: v for k, v in (("target_flops", target_flops), ("target_params", target_params), ("ratio", ratio))
             if v is not None}
    if len(given) != 1:
        raise ValueError(f"prune needs exactly one of target_flops, target_params or ratio, got "
                         f"{', '.join(given) if given else 'none'}")
    kind, value = next(iter(given.items()))
    if kind == "ratio" and not 0.0 <= value < 1.0:
        raise ValueError(f"ratio is the fraction of channels removed per layer and must be in [0, 1), got {value}")
    if kind != "ratio" and (value != int(value) or value < 1):
        raise ValueError(f"{kind} must be a positive integer, got {value}")
    if not 0.0 < tolerance < 0.5:
        raise ValueError(f"tolerance must be in (0, 0.5), got {tolerance}")
    if round_to is not None and round_to < 1:
        raise ValueError(f"round_to must be a positive channel count, got {round_to}")
    return kind.removeprefix("target_"), value


def _ignored_names(model: nn.Module, layers: Sequence[nn.Module | str] | None) -> set[str]:
    """Dotted names of ``layers`` (modules of ``model`` or names), checked against ``model``."""
    names = {id(m): n for n, m in model.named_modules()}
    out = set()
    for layer in layers or ():
        if isinstance(layer, str):
            model.get_submodule(layer)  # raises AttributeError naming the missing part
            out.add(layer)
        elif id(layer) in names:
            out.add(names[id(layer)])
        else:
            raise ValueError(f"ignored_layers holds a {type(layer).__name__} that is not a layer of the model")
    return out


def _copy(model: nn.Module) -> nn.Module:
    """Deep copy that keeps ``.grad`` (``copy.deepcopy`` drops it; the Taylor criterion reads it)."""
    clone = copy.deepcopy(model)
    for p, q in zip(model.parameters(), clone.parameters()):
        if p.grad is not None:
            q.grad = p.grad.detach().clone()
    return clone


@dataclass
class _Group:
    """A prunable dependency group: its unit, its root layer (unit-relative name), channels per channel group and
    the importance of each of them."""

    unit: Unit
    root: str
    size: int
    scores: torch.Tensor  # (size,)
    fixed: float | None = None  # a ratio of pruning_ratio_dict, else None (the search's ratio)


class _Plan:
    """Scores every prunable group of ``model`` once; then prunes any copy of it for a given ratio."""

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, importance: Any, ignored: set[str],
                 global_pruning: bool, min_channels: int, options: TorchPruningOptions) -> None:
        self.units, self.importance, self.ignored = find_units(model, example_inputs), importance, ignored
        self.example_inputs = example_inputs
        self.global_pruning, self.min_channels, self.options = global_pruning, min_channels, options
        self.widths = {n: _out_channels(m) for n, m in model.named_modules() if isinstance(m, _PRUNABLE)}
        self.groups: list[_Group] = []
        for unit in self.units:
            pruner = self._pruner(model, unit, {})
            dg = pruner.DG
            for group in dg.get_all_groups(ignored_layers=pruner.ignored_layers,
                                           root_module_types=pruner.root_module_types):
                scores = pruner.estimate_importance(group)
                if scores is None:
                    continue
                ch_groups = pruner._get_channel_groups(group)
                scores = scores.view(ch_groups, -1).mean(0) if ch_groups > 1 else scores  # as BasePruner ranks them
                root = dg._module2name[group[0].dep.target.module]
                fixed = options.ratios.get(f"{unit.name}.{root}" if unit.name else root)
                self.groups.append(_Group(unit, root, len(scores), scores.detach().float().cpu(), fixed))
        if not self.groups:
            raise ValueError(f"{type(model).__name__} has no prunable channel group (all layers ignored or "
                             "untraceable)")

    def _pruner(self, model: nn.Module, unit: Unit, counts: dict[str, tuple[int, int]]) -> tp.pruner.BasePruner:
        sub = model.get_submodule(unit.name) if unit.name else model
        prefix = f"{unit.name}." if unit.name else ""
        ignored = [sub.get_submodule(n) for n in unit.frozen]
        ignored += [sub.get_submodule(n.removeprefix(prefix)) for n in self.ignored
                    if (n.startswith(prefix) or not prefix) and n != unit.name]
        # (n − ½)/size makes BasePruner's size − int(size · (1 − ratio)) exactly n
        ratios = {sub.get_submodule(root): (n - 0.5) / size for root, (n, size) in counts.items() if n > 0}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Torch-Pruning warns about every unwrapped parameter it finds
            return tp.pruner.BasePruner(sub, unit.example_inputs, importance=self.importance, pruning_ratio=0.0,
                                        pruning_ratio_dict=ratios, ignored_layers=ignored,
                                        round_to=self.min_channels if self.min_channels > 1 else None,
                                        **self.options.for_unit(sub, prefix))

    def counts(self, ratio: float) -> list[int]:
        """Channels each group loses at ``ratio`` (each keeps at least ``min_channels``)."""
        sizes = [g.size for g in self.groups]
        free = [g for g in self.groups if g.fixed is None]  # the groups the search's ratio prunes
        wanted = {id(g): g.size - int(g.size * (1 - g.fixed)) for g in self.groups if g.fixed is not None}
        if self.global_pruning and free:
            scores = torch.cat([g.scores for g in free])
            n_total = len(scores) - int(len(scores) * (1 - ratio))
            threshold = torch.kthvalue(scores, n_total).values if n_total > 0 else None
            wanted.update({id(g): int((g.scores <= threshold).sum()) if threshold is not None else 0 for g in free})
        else:
            wanted.update({id(g): g.size - int(g.size * (1 - ratio)) for g in free})
        return [max(0, min(wanted[id(g)], size - min(self.min_channels, size))) for g, size in zip(self.groups, sizes)]

    def apply(self, model: nn.Module, ratio: float) -> dict[str, list[int]]:
        """Prunes ``model`` (a copy of the scored model) in place at ``ratio``; returns the kept output channels."""
        kept = {n: list(range(w)) for n, w in self.widths.items()}
        counts = self.counts(ratio)
        for unit in self.units:
            unit_counts = {g.root: (n, g.size) for g, n in zip(self.groups, counts) if g.unit is unit}
            if not any(n for n, _ in unit_counts.values()):
                continue
            pruner = self._pruner(model, unit, unit_counts)
            prefix = f"{unit.name}." if unit.name else ""
            for group in pruner.step(interactive=True):
                _record_kept(group, pruner.DG, prefix, kept)
                group.prune()
            sync_attention(model, pruner.num_heads)
        check_forward(model, self.example_inputs)
        return kept


def _out_channels(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _record_kept(group: Any, dg: tp.DependencyGraph, prefix: str, kept: dict[str, list[int]]) -> None:
    """Drops the channels ``group`` removes from the output-channel lists of its conv and linear layers."""
    removed: dict[str, set[int]] = {}
    for dep, idxs in group:
        if dg.is_out_channel_pruning_fn(dep.handler) and isinstance(dep.target.module, _PRUNABLE):
            removed.setdefault(prefix + dg._module2name[dep.target.module], set()).update(int(i) for i in idxs)
    for name, drop in removed.items():
        kept[name] = [k for j, k in enumerate(kept[name]) if j not in drop]


def _search(plan: _Plan, work: nn.Module, kind: str, target: int, before: Complexity,
            input_size: tuple[int, ...], tolerance: float) -> tuple[nn.Module, dict[str, list[int]], float, list]:
    """The least pruned copy of ``work`` with ``kind`` (flops | params) at or below ``target``
    (:func:`pruning.search.find_ratio`); every copy tried is a :class:`PruneStep`."""
    steps: list[PruneStep] = []
    sizes: dict[tuple[int, ...], int] = {}  # channel counts → size: the same counts give the same model
    kept_copy: dict[tuple[int, ...], tuple[nn.Module, dict[str, list[int]]]] = {}  # the latest copy within target

    def measure(ratio: float) -> Trial:
        counts = tuple(plan.counts(ratio))
        if counts in sizes:  # no need to build it again
            return Trial(ratio, sizes[counts], new=False)
        model = _copy(work)
        kept = plan.apply(model, ratio)
        c = profile(model, input_size)
        steps.append(PruneStep(ratio, c.flops, c.params))
        sizes[counts] = getattr(c, kind)
        if sizes[counts] <= target:
            kept_copy.clear()  # a later copy within the target is less pruned: only it can be the answer
            kept_copy[counts] = (model, kept)
        return Trial(ratio, sizes[counts])

    start = getattr(before, kind)
    if start <= target:
        return _copy(work), {n: list(range(w)) for n, w in plan.widths.items()}, 0.0, steps
    try:
        ratio = find_ratio(measure, start, target, tolerance)
    except UnreachableTarget as err:
        noun = "flops" if kind == "flops" else "parameters"
        raise ValueError(f"target_{kind}={target:,} is below the smallest reachable value: pruning every layer down "
                         f"to {plan.min_channels} channel(s) leaves {err.smallest:,} {noun} (from {start:,}); ask for "
                         f"at least {err.smallest:,}") from None
    model, kept = kept_copy[tuple(plan.counts(ratio))]
    return model, kept, ratio, steps
