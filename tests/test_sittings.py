"""``OUT/sittings.json``: every start and ``--resume`` of a run with the hardware it trained on, and one line naming
a sitting whose hardware differs from the one before (a run parked on a bf16 CPU and resumed on an fp32 one)."""
import json

from kd.precision import Hardware
from recipes.plumbing.sittings import SITTINGS_NAME, hardware_changes, read_sittings, record_sitting

BF16 = Hardware("AMD EPYC", "AVX512", True, "cpu", 2, "bf16", True)
FP32 = Hardware("AMD EPYC", "AVX2", False, "cpu", 2, "fp32", False)


def test_a_fresh_run_starts_the_list_and_each_resume_adds_one(tmp_path):
    first = record_sitting(tmp_path, BF16, resumed=False)
    assert len(first) == 1 and first[0]["hardware"] == BF16.to_dict() and first[0]["started"].endswith("Z")
    both = record_sitting(tmp_path, FP32, resumed=True)
    assert [s["hardware"]["precision"] for s in both] == ["bf16", "fp32"]
    assert read_sittings(tmp_path) == json.loads((tmp_path / SITTINGS_NAME).read_text()) == both
    assert len(record_sitting(tmp_path, FP32, resumed=False)) == 1  # --overwrite or a new run: a new list


def test_a_resume_of_a_run_that_recorded_no_sittings_starts_with_an_unrecorded_entry(tmp_path):
    (tmp_path / SITTINGS_NAME).write_text("not json")
    assert read_sittings(tmp_path) == []
    sittings = record_sitting(tmp_path, FP32, resumed=True)
    assert sittings[0] == {"started": None, "hardware": None} and sittings[1]["hardware"]["precision"] == "fp32"
    assert hardware_changes(sittings) is None  # nothing recorded to compare with


def test_hardware_changes_names_the_sitting_and_both_precisions_and_ignores_threads(tmp_path):
    same = [{"started": "t", "hardware": BF16.to_dict()}, {"started": "u", "hardware": {**BF16.to_dict(), "threads": 8}}]
    assert hardware_changes(same) is None
    mixed = [*same, {"started": "v", "hardware": FP32.to_dict()}]
    line = hardware_changes(mixed)
    assert line is not None and line.count("sitting ") == 1
    assert "sitting 3: fp32 NCHW on cpu, CPU AMD EPYC (AVX2) (before: bf16 channels_last on cpu" in line
