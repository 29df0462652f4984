"""Smoke tests of benchmark scripts on tiny sizes: they run end to end and print their
greppable last lines.

benchmarks/data_parallel.py on 200 DCR rows (generated into a temporary cache), one timed
iteration, 1 and 2 gloo processes: the two-process run follows the one-process Φ trajectory
within 1e-8 relative with the same work units."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
FLOAT = r"([0-9.eE+-]+)"


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_data_parallel_benchmark_tiny(tmp_path: Path) -> None:
    env = {**os.environ, "GNVPRO_CACHE": str(tmp_path), "PYTHONIOENCODING": "utf-8",
           "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "data_parallel.py"),
                          "--n", "200", "--iters", "1", "--procs", "1,2"],
                         check=True, cwd=ROOT, env=env, capture_output=True, timeout=120,
                         encoding="utf-8").stdout
    seconds = re.search(rf"^seconds per iteration: plain {FLOAT}, 1 proc {FLOAT}, "
                        rf"2 procs {FLOAT}$", out, re.M)
    speedup = re.search(rf"^speed-up 2 procs / 1 proc: {FLOAT}$", out, re.M)
    same = re.search(rf"^max relative difference of Φ: {FLOAT}; work units equal: (\w+)$", out,
                     re.M)
    assert seconds and speedup and same, out
    assert all(float(t) > 0 for t in seconds.groups())
    assert float(speedup.group(1)) > 0
    assert float(same.group(1)) <= 1e-8
    assert same.group(2) == "True"
    assert "every rank bitwise equal: True" in out


def test_gn_product_algebra_benchmark_tiny() -> None:
    """benchmarks/gn_product_algebra.py against HEAD's product on wine, two TN iterations: the
    table row, positive times, the same product (rel. diff ≤ 1e-12)."""
    pytest.importorskip("sklearn")
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True).returncode:
        pytest.skip("not a git checkout")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gn_product_algebra.py"),
                          "--baseline", "HEAD", "--problems", "wine", "--steps", "2",
                          "--repeats", "1"],
                         check=True, cwd=ROOT, env=env, capture_output=True, timeout=300,
                         encoding="utf-8").stdout
    row = re.search(r"^\| wine \| (.+) \|$", out, re.M)
    assert row, out
    cells = [float(c) for c in row.group(1).split(" | ")]
    assert len(cells) == 9 and all(c > 0 for c in cells[:6]), cells
    assert cells[8] <= 1e-12


def test_memory_benchmarks_tiny_cnn() -> None:
    """benchmarks/memory.py --problem cnn and benchmarks/predict_memory.py on a few CIFAR-shaped
    images: they run and print their tables and last lines (Linux /proc only)."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc/self/clear_refs")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memory.py"), "--problem",
                          "cnn", "--n", "16", "--chunks", "2", "--products", "1"],
                         check=True, cwd=ROOT, env=env, capture_output=True, timeout=300,
                         encoding="utf-8").stdout
    rows = re.findall(rf"^\s+(\d+)\s+(keep|recompute)\s+{FLOAT}\s+{FLOAT}$", out, re.M)
    assert [r[:2] for r in rows] == [("1", "keep"), ("2", "keep"), ("2", "recompute")], out
    assert re.search(rf"^peak ratio chunked/unchunked: {FLOAT}$", out, re.M), out
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "predict_memory.py"),
                          "--n", "64", "--rows", "16"],
                         check=True, cwd=ROOT, env=env, capture_output=True, timeout=300,
                         encoding="utf-8").stdout
    mb = dict(re.findall(r"^\| (.+?) \| (\d+) \|$", out, re.M))
    assert set(mb) == {"one forward pass", "blocks of 16 rows", "SGD's current() (FirstOrder)"}
    assert re.search(rf"^peak ratio rows=16/one pass: {FLOAT}$", out, re.M), out
