"""FitNet hint loss between a student layer and a teacher layer, attached with forward hooks."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kd.hooks import FeatureHook


class HintLoss(nn.Module):
    """FitNets hint (Romero et al., 2015): ``weight · mean((r(f_s) − f_t)²)``.

    ``f_s`` (B, C_s, H, W) and ``f_t`` (B, C_t, H, W) are the outputs of ``student_layer`` and ``teacher_layer``,
    captured by forward hooks on each model's forward pass; ``r`` is a 1×1 convolution C_s → C_t (the regressor,
    trained with the student). Call it after both models have run on the same batch.

    Args:
        student, teacher: the two models (the hooks go on them; nothing is rewritten).
        student_layer, teacher_layer: dotted module names, e.g. ``"features.conv3"``.
        weight: factor on the mean squared error.
        kept_channels: for a student pruned from the teacher, the teacher channel index of each student channel
            (length C_s). The regressor then starts as the exact inverse of the pruning selection: student channel j
            goes to teacher channel ``kept_channels[j]`` and every other teacher channel gets 0. Without it the
            regressor starts at PyTorch's default initialisation.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, student_layer: str, teacher_layer: str, *,
                 weight: float = 1.0, kept_channels: Sequence[int] | None = None,
                 example_input: torch.Tensor | None = None) -> None:
        super().__init__()
        self._student_hook = FeatureHook(student, student_layer)
        self._teacher_hook = FeatureHook(teacher, teacher_layer)
        c_s, c_t = _channels(student, student_layer, example_input), _channels(teacher, teacher_layer, example_input)
        self.weight = float(weight)
        self.regressor = nn.Conv2d(c_s, c_t, 1, bias=False)
        if kept_channels is not None:
            if len(kept_channels) != c_s or max(kept_channels) >= c_t:
                raise ValueError(f"kept_channels must give one teacher channel (< {c_t}) for each of the {c_s} "
                                 f"student channels, got {len(kept_channels)} entries")
            with torch.no_grad():
                self.regressor.weight.zero_()
                self.regressor.weight[list(kept_channels), list(range(c_s)), 0, 0] = 1.0

    def forward(self) -> torch.Tensor:
        f_s, f_t = self._student_hook.output, self._teacher_hook.output
        if f_s is None or f_t is None:
            raise RuntimeError("HintLoss is called after the student and the teacher have run on the batch")
        f_t = f_t.detach().clone()  # a plain tensor even when the teacher ran under inference_mode
        return self.weight * F.mse_loss(self.regressor(f_s.float()), f_t.float())

    def remove(self) -> None:
        """Removes both hooks."""
        self._student_hook.remove()
        self._teacher_hook.remove()


def _channels(model: nn.Module, layer: str, example_input: torch.Tensor | None) -> int:
    """Output channels of ``layer``: read from its last conv/BN, or measured on ``example_input``."""
    module = model.get_submodule(layer)
    convs = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    if convs:
        last = convs[-1]
        return last.out_channels if isinstance(last, nn.Conv2d) else last.num_features
    if example_input is None:
        raise ValueError(f"cannot tell the channels of {layer!r}; pass example_input")
    hook = FeatureHook(model, layer)
    with torch.no_grad():
        model(example_input)
    channels = hook.output.shape[1]
    hook.remove()
    return int(channels)
