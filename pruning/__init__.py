"""Structured pruning with Torch-Pruning: ``prune`` to a FLOPs/params target or ratio, importance criteria, and
pickle-free save/load of pruned models."""
from pruning.importance import IMPORTANCES, ActivationImportance, SeededRandomImportance, make_importance
from pruning.persistence import load, save
from pruning.prune import PruneResult, PruneStep, prune

__all__ = [
    "IMPORTANCES",
    "ActivationImportance",
    "PruneResult",
    "PruneStep",
    "SeededRandomImportance",
    "load",
    "make_importance",
    "prune",
    "save",
]
