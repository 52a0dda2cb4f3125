"""Structured pruning with Torch-Pruning: ``prune`` to a FLOPs/params target or ratio, importance criteria, and
pickle-free save/load of pruned models."""
from pruning.importance import (
    IMPORTANCES, ActivationImportance, SeededRandomImportance, make_importance, register_importance,
)
from pruning.failures import PruningError
from pruning.passthrough import find_num_heads
from pruning.persistence import load, save
from pruning.prune import PruneResult, PruneStep, prune

__all__ = [
    "IMPORTANCES",
    "ActivationImportance",
    "PruneResult",
    "PruneStep",
    "PruningError",
    "SeededRandomImportance",
    "load",
    "find_num_heads",
    "make_importance",
    "prune",
    "register_importance",
    "save",
]

# The lab's hand methods (issue 5): wide_cnn transformations and the progressive prune → fine-tune loop.
from pruning.fc import FCPruneResult, prune_fc  # noqa: E402
from pruning.kernels import KernelCompressionResult, compress_kernels  # noqa: E402
from pruning.layer_removal import (  # noqa: E402
    BlockScore, LayerRemovalResult, rank_blocks, remove_block, remove_layers,
)
from pruning.progressive import ProgressiveResult, StepRecord, progressive_prune  # noqa: E402

__all__ += [
    "BlockScore", "FCPruneResult", "KernelCompressionResult", "LayerRemovalResult", "ProgressiveResult", "StepRecord",
    "compress_kernels", "prune_fc", "progressive_prune", "rank_blocks", "remove_block", "remove_layers",
]
