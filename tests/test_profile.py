import torch
from torch import nn

from models import Complexity, create_model, format_report, profile


def test_profile_matches_a_hand_count():
    # conv: 4 out channels × 8×8 positions × (3 in × 3×3) MACs = 6912; linear: 256 × 5 = 1280.
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, 5, bias=False))
    c = profile(model, (1, 3, 8, 8))
    assert c.flops == 6912 + 1280
    assert c.params == 3 * 4 * 9 + 256 * 5
    assert c.param_size_kb == (3 * 4 * 9 + 256 * 5) * 4 / 1024


def test_profile_leaves_the_model_untouched():
    model = create_model("wide_cnn", 10, widths=(8, 16))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    profile(model)
    after = model.state_dict()
    assert before.keys() == after.keys()  # no thop total_ops / total_params buffers
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats not updated
    assert all(not m._forward_hooks for m in model.modules())
    assert model.training


def test_profile_of_the_lab_teacher():
    c = profile(create_model("wide_cnn", 100))
    convs = 3 * 64 * 9 * 32 * 32 + 64 * 128 * 9 * 32 * 32 + 128 * 256 * 9 * 16 * 16 + 256 * 256 * 9 * 16 * 16
    assert convs < c.flops < convs * 1.02  # the conv MACs dominate; BN and FC add under 2 %


def test_report_block_is_exactly_the_lab_format():
    text = format_report(Complexity(flops=31269888, params=2221520, param_size_kb=8677.8125), 90.3949)
    assert text == "flops = 31269888\nModel parameter size = 8677.812 kB\nAccuracy = 90.39 %"
