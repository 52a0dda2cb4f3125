"""The Torch-Pruning internals this project relies on, each checked by name: when an upgrade renames or drops one,
this test fails saying which attribute and which of our functions uses it (the version pin alone would only say
that something broke somewhere)."""
from __future__ import annotations

import inspect
import warnings

import pytest
import torch
import torch_pruning as tp
from torch_pruning.pruner import function

from models import create_model

# (owner, attribute, where this project uses it)
PRUNER = [
    ("DG", "pruning/prune.py _Plan and _record_kept: the dependency graph of a pruner"),
    ("ignored_layers", "pruning/prune.py _Plan: the groups it scores"),
    ("root_module_types", "pruning/prune.py _Plan: the groups it scores"),
    ("estimate_importance", "pruning/prune.py _Plan: scores of a group"),
    ("_get_channel_groups", "pruning/prune.py _Plan: channel groups averaged as BasePruner ranks them"),
    ("step", "pruning/prune.py _Plan.apply: step(interactive=True) yields the groups it prunes"),
]
GRAPH = [
    ("get_all_groups", "pruning/prune.py _Plan"),
    ("_module2name", "pruning/prune.py _Plan, _record_kept; pruning/importance.py SeededRandomImportance"),
    ("is_out_channel_pruning_fn", "pruning/prune.py _record_kept"),
]
GROUP = [
    ("_DG", "pruning/importance.py SeededRandomImportance: the graph of a group"),
    ("prune", "pruning/prune.py _Plan.apply"),
]
ITEM = [("dep", "pruning/importance.py, pruning/prune.py"), ("idxs", "pruning/importance.py"),
        ("root_idxs", "pruning/importance.py ActivationImportance")]
DEPENDENCY = [("handler", "pruning/importance.py ActivationImportance, pruning/prune.py _record_kept"),
              ("target", "pruning/importance.py, pruning/prune.py: dep.target.module is the layer")]
FUNCTIONS = ["prune_conv_in_channels", "prune_linear_in_channels", "prune_conv_out_channels",
             "prune_batchnorm_out_channels"]  # pruning/importance.py ActivationImportance
IMPORTANCE_CLASSES = ["Importance", "MagnitudeImportance", "GroupMagnitudeImportance", "TaylorImportance",
                      "GroupTaylorImportance"]  # pruning/importance.py bases its criteria on them
GROUP_MAGNITUDE = [("_reduce", "pruning/importance.py ActivationImportance"),
                   ("_normalize", "pruning/importance.py ActivationImportance"),
                   ("normalizer", "pruning/importance.py ActivationImportance")]
BASE_PRUNER_ARGS = ["importance", "pruning_ratio", "pruning_ratio_dict", "ignored_layers", "round_to"]


def _missing(obj: object, table: list[tuple[str, str]], owner: str) -> list[str]:
    return [f"torch_pruning {tp.__version__}: {owner}.{name} is gone (used by {where})"
            for name, where in table if not hasattr(obj, name)]


@pytest.fixture(scope="module")
def pruner_and_group():
    model = create_model("wide_cnn", 10, widths=(8, 16), hidden=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.BasePruner(model, torch.zeros(1, 3, 32, 32), pruning_ratio=0.5,
                                      importance=tp.importance.MagnitudeImportance(p=1),
                                      ignored_layers=[model.get_classifier()])
    group = next(iter(pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                               root_module_types=pruner.root_module_types)))
    return pruner, group


def test_the_pruner_graph_and_groups_have_what_we_use(pruner_and_group):
    pruner, group = pruner_and_group
    missing = (_missing(pruner, PRUNER, "BasePruner") + _missing(pruner.DG, GRAPH, "DependencyGraph")
               + _missing(group, GROUP, "Group") + _missing(group[0], ITEM, "Group item")
               + _missing(group[0].dep, DEPENDENCY, "Dependency"))
    assert not missing, "\n".join(missing)
    dep, idxs = group[0]  # a group item unpacks to (dependency, indices)
    assert isinstance(dep.target.module, torch.nn.Module) and len(idxs) == len(group[0].idxs)
    assert pruner.DG._module2name[dep.target.module], "DependencyGraph._module2name no longer maps modules to names"


def test_the_functions_and_importance_classes_we_build_on_exist():
    missing = [f"torch_pruning {tp.__version__}: torch_pruning.pruner.function.{n} is gone (used by "
               "pruning/importance.py ActivationImportance)" for n in FUNCTIONS if not hasattr(function, n)]
    missing += [f"torch_pruning {tp.__version__}: torch_pruning.importance.{n} is gone (pruning/importance.py "
                "subclasses or checks it)" for n in IMPORTANCE_CLASSES if not hasattr(tp.importance, n)]
    if hasattr(tp.importance, "GroupMagnitudeImportance"):
        missing += _missing(tp.importance.GroupMagnitudeImportance(p=1), GROUP_MAGNITUDE, "GroupMagnitudeImportance")
    taken = inspect.signature(tp.pruner.BasePruner).parameters
    missing += [f"torch_pruning {tp.__version__}: BasePruner no longer takes {n}= (pruning/prune.py _Plan._pruner)"
                for n in BASE_PRUNER_ARGS if n not in taken]
    assert not missing, "\n".join(missing)
