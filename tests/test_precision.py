"""Precision and memory format follow the hardware: bf16 only where it is native, and what was used is reported."""
import json

import pytest
import torch

import kd.precision as precision
from kd import Trainer
from kd.data import make_loaders
from kd.precision import Hardware, resolve_precision
from models import create_model


@pytest.fixture
def cpu_flags(monkeypatch):
    def set_flags(flags: str, name: str = "Test CPU") -> None:
        monkeypatch.setattr(precision, "_cpuinfo", lambda: {"model name": name, "flags": flags})
    return set_flags


@pytest.mark.parametrize("flags,expected", [("fpu sse avx2 fma", "fp32"), ("avx2 avx512f avx512_bf16", "bf16"),
                                            ("avx2 avx512f amx_bf16 amx_tile", "bf16"), ("avx2 avx512f", "fp32")])
def test_auto_is_bf16_only_on_cpus_with_native_bf16(cpu_flags, flags, expected):
    cpu_flags(flags)
    assert resolve_precision("auto", "cpu") == expected
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    hw = Hardware.detect("auto", "cpu")
    assert hw.precision == expected and hw.channels_last == (expected == "bf16") and hw.cpu == "Test CPU"
    assert Hardware.detect("auto", "cpu", channels_last=True).channels_last


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, got 'fp16'"):
        resolve_precision("fp16", "cpu")


def test_trainer_runs_what_auto_resolves_to_and_stays_fp32_in_its_loss(cpu_flags, tiny):
    cpu_flags("avx2")
    train, test = make_loaders(tiny, 32)
    torch.manual_seed(0)
    trainer = Trainer(create_model("wide_cnn", 10, widths=(8, 8), hidden=16), epochs=1, progress=False)
    assert (trainer.precision, trainer.channels_last) == ("fp32", False)
    cpu_flags("avx512_bf16")
    trainer = Trainer(create_model("wide_cnn", 10, widths=(8, 8), hidden=16), epochs=1, progress=False)
    assert (trainer.precision, trainer.channels_last) == ("bf16", True)
    assert trainer.student.features.conv1.conv.weight.is_contiguous(memory_format=torch.channels_last)
    record = trainer.fit(train, test).history[0]
    assert record.train_parts["ce"] > 0 and record.val_accuracy >= 0  # bf16 forward, fp32 loss: finite numbers


def test_fp32_and_channels_last_give_the_same_training(tiny):
    """The memory format is a layout, not a numerical change: one epoch ends at the same weights."""
    train, test = make_loaders(tiny, 32)
    weights = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        model = create_model("wide_cnn", 10, widths=(8, 8), hidden=16)
        train.generator.manual_seed(0)
        Trainer(model, epochs=1, precision="fp32", channels_last=channels_last, progress=False).fit(train)
        weights.append(model.classifier.weight.detach().clone())
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-4, atol=1e-5)


def test_the_report_records_cpu_and_precision(tmp_path, tiny):
    from recipes.plumbing.report import ModelReport, write_report
    write_report(tmp_path / "report.json", [ModelReport("m", 1, 2, 0.1, 50.0)],
                 {"precision": "fp32", "device": "cpu", "channels_last": None})
    hw = json.loads((tmp_path / "report.json").read_text())["hardware"]
    assert hw["precision"] == "fp32" and hw["cpu"] == precision.cpu_model() and hw["channels_last"] is False
