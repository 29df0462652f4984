"""benchmarks/shard.py: a file split under a size limit joins back bit for bit; a missing or
altered piece is refused."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "shard.py"


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True)


def test_split_then_join_is_identical(tmp_path):
    src = tmp_path / "data.npz"
    src.write_bytes(bytes(range(256)) * 5000)  # 1.28 MB
    assert _run("split", src, tmp_path / "p", "--max-mib", 0.5).returncode == 0
    pieces = sorted((tmp_path / "p").glob("data.npz.0*"))
    assert len(pieces) == 3 and all(p.stat().st_size <= 0.5 * 2**20 for p in pieces)
    out = tmp_path / "back" / "data.npz"
    out.parent.mkdir()
    r = _run("join", tmp_path / "p", out)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == src.read_bytes()


@pytest.mark.parametrize("damage", ["missing", "altered"])
def test_join_refuses_damaged_pieces(tmp_path, damage):
    src = tmp_path / "d.bin"
    src.write_bytes(b"x" * 3000)
    _run("split", src, tmp_path / "p", "--max-mib", 0.001)
    piece = tmp_path / "p" / "d.bin.001"
    if damage == "missing":
        piece.unlink()
    else:
        piece.write_bytes(b"y" * piece.stat().st_size)
    r = _run("join", tmp_path / "p", tmp_path / "d.bin")
    assert r.returncode == 1 and r.stderr.startswith("shard:"), r.stderr
    assert src.read_bytes() == b"x" * 3000  # the original is untouched
    assert not (tmp_path / "d.bin.tmp").exists()
