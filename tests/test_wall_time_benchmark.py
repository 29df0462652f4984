"""Smoke test of benchmarks/wall_time.py with --variant on the synthetic ellipse (tiny budget):
a variant is its own row, trained with its changed setting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wall_time_variant_is_a_row_of_its_own(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "wall_time.py"), "ellipse",
                    "--seeds", "0", "--methods", "gnvpro-tn", "--budget-scale", "0.05",
                    "--variant", "tn-k2=gnvpro-tn:inner_forcing=1e-2",
                    "--out", str(tmp_path)],
                   check=True, cwd=ROOT, env=env, capture_output=True, timeout=600)
    compact = (tmp_path / "compact.md").read_text()
    assert "| gnvpro-tn |" in compact and "| tn-k2 |" in compact
    def levels(phase: str, label: str) -> list[dict]:
        f = next((tmp_path / phase / label).glob("seed-*/config.json"))
        return json.loads(f.read_text())["levels"]

    for phase in ("budget", "equal-time"):
        assert [lv.get("inner_forcing") for lv in levels(phase, "tn-k2")] == [0.01]
        assert [lv.get("inner_forcing", 0.0) for lv in levels(phase, "gnvpro-tn")] == [0.0]
