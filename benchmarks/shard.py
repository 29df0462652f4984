"""Split a large file into pieces under a size limit and join them again, checked by SHA-256:
how ../shared/data/cifar10.npz (163 MiB) travels to a lent GPU machine whose calls carry at
most 64 MiB each (one piece per call; the pieces persist there while the machine stays up).

    python benchmarks/shard.py split FILE DIR [--max-mib 60]  # DIR/NAME.000, ..., NAME.sha256
    python benchmarks/shard.py join DIR FILE                   # rebuilds FILE, checks the hash
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def split(src: Path, out: Path, max_mib: float) -> list[Path]:
    """Write src as out/NAME.000, out/NAME.001, ... of at most max_mib MiB, and NAME.sha256."""
    size = int(max_mib * (1 << 20))
    if size <= 0:
        raise ValueError(f"--max-mib must be > 0, got {max_mib}")
    out.mkdir(parents=True, exist_ok=True)
    pieces = []
    with src.open("rb") as f:
        for i, chunk in enumerate(iter(lambda: f.read(size), b"")):
            pieces.append(out / f"{src.name}.{i:03d}")
            pieces[-1].write_bytes(chunk)
    (out / f"{src.name}.sha256").write_text(f"{_sha256(src)}  {src.name}\n")
    return pieces


def join(pieces_dir: Path, dst: Path) -> None:
    """Concatenate pieces_dir/NAME.### into dst (NAME = dst's name) and check its SHA-256."""
    want_file = pieces_dir / f"{dst.name}.sha256"
    if not want_file.is_file():
        raise FileNotFoundError(f"{want_file} not found: split the file first")
    pieces = sorted(pieces_dir.glob(f"{dst.name}.[0-9][0-9][0-9]"))
    if [p.suffix for p in pieces] != [f".{i:03d}" for i in range(len(pieces))]:
        raise FileNotFoundError(f"pieces of {dst.name} missing in {pieces_dir}: have "
                                f"{[p.name for p in pieces]}")
    tmp = dst.with_name(dst.name + ".tmp")
    with tmp.open("wb") as f:
        for p in pieces:
            f.write(p.read_bytes())
    want = want_file.read_text().split()[0]
    if _sha256(tmp) != want:
        tmp.unlink()
        raise ValueError(f"{dst.name}: SHA-256 of the joined pieces differs from {want_file}")
    tmp.replace(dst)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split")
    s.add_argument("file", type=Path)
    s.add_argument("dir", type=Path)
    s.add_argument("--max-mib", type=float, default=60.0)
    j = sub.add_parser("join")
    j.add_argument("dir", type=Path)
    j.add_argument("file", type=Path)
    args = ap.parse_args()
    try:
        if args.cmd == "split":
            for p in split(args.file, args.dir, args.max_mib):
                print(p)
        else:
            join(args.dir, args.file)
            print(f"joined {args.file} (SHA-256 checked)")
    except (OSError, ValueError) as e:
        sys.exit(f"shard: {e}")


if __name__ == "__main__":
    main()
