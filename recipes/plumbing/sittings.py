"""The sittings of a run: when each start or ``--resume`` began and what hardware it trained on, kept in
``OUT/sittings.json`` and copied into ``report.json``.

``--precision auto`` and ``--device`` may resolve differently when a parked run continues on another machine (bf16 on
a CPU with AVX512-BF16, fp32 on an AVX2-only one; the CPU or a GPU), and ``report.json``'s ``hardware`` says only where
the run finished. The list of sittings says where every part of it ran, and a run whose sittings differ says so on
its console. A run resumed from a folder written before sittings were recorded starts its list with
``{"started": null, "hardware": null}``: earlier sittings, not recorded.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from kd.precision import Hardware
from recipes.plumbing.report import write_json

SITTINGS_NAME = "sittings.json"
# what makes two sittings' training differ (threads change speed only)
_COMPARED = ("cpu", "cpu_capability", "device", "precision", "channels_last")


def read_sittings(out: Path) -> list[dict[str, Any]]:
    """The sittings recorded in ``out`` (oldest first); none when the file is missing or unreadable."""
    try:
        sittings = json.loads((out / SITTINGS_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [s for s in sittings if isinstance(s, dict)] if isinstance(sittings, list) else []


def record_sitting(out: Path, hardware: Hardware, resumed: bool) -> list[dict[str, Any]]:
    """Appends this sitting to ``out/sittings.json`` (a fresh run starts a new list) and returns the list.

    Args:
        out: the run's output folder.
        hardware: what this sitting trains on.
        resumed: True on ``--resume``: the earlier sittings are kept, or stand as one unrecorded entry when the run
            was started by a version that did not record them.
    """
    earlier = read_sittings(out) if resumed else []
    if resumed and not earlier:
        earlier = [{"started": None, "hardware": None}]
    now = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "hardware": hardware.to_dict()}
    sittings = [*earlier, now]
    write_json(out / SITTINGS_NAME, sittings)
    return sittings


def hardware_changes(sittings: list[dict[str, Any]]) -> str | None:
    """One line naming the sittings that trained on hardware unlike the sitting before it (another CPU, device,
    precision or memory format), or None when all recorded sittings agree; unrecorded sittings are skipped."""
    seen = [(i + 1, s["hardware"]) for i, s in enumerate(sittings) if isinstance(s.get("hardware"), dict)]
    changes = [f"sitting {n}: {_short(hw)} (before: {_short(prev)})" for (_, prev), (n, hw) in zip(seen, seen[1:])
               if any(prev.get(k) != hw.get(k) for k in _COMPARED)]
    if not changes:
        return None
    return f"this run trained on different hardware in its sittings ({SITTINGS_NAME}): " + "; ".join(changes)


def _short(hw: dict[str, Any]) -> str:
    layout = "channels_last" if hw.get("channels_last") else "NCHW"
    return f"{hw.get('precision')} {layout} on {hw.get('device')}, CPU {hw.get('cpu')} ({hw.get('cpu_capability')})"
