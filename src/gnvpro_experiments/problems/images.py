"""Image classification data: CIFAR-10 and Fashion-MNIST (docs/experiments.md section 5).

Loaders return NumPy arrays: images uint8 (n, H, W) or (n, H, W, C) (channels last), labels
int64 (n,). :func:`image_split` turns them into a standardised :class:`Split`.
:class:`ImageClassification` is the experiments' problem (``problem = "cifar10"`` or
``"fashion-mnist"``); its report figure is ``confusion.png`` (:func:`confusion_figures`).
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import Tensor

from .base import Problem, Split
from .paths import default_data_file, read_npz, require_dir, require_file

if TYPE_CHECKING:
    from ..config import ExperimentConfig

CIFAR10_FILE = "cifar10.npz"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

ImageArrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

_CIFAR_NPZ_HOW = (
    "It is the shared archive 'cifar10.npz' (x_train (50000,32,32,3) uint8, y_train, x_test, "
    "y_test) described in shared/data/README.md; a standard 'cifar-10-batches-py' directory "
    "(https://www.cs.toronto.edu/~kriz/cifar.html) works too."
)
_CIFAR_BATCHES_HOW = (
    "Download and unpack cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html;"
    " it holds data_batch_1..5 and test_batch."
)
_FASHION_HOW = (
    "Install the Debian package with 'apt-get install dataset-fashion-mnist' (files under "
    f"{FASHION_MNIST_DIR}) or download the four IDX files from "
    "https://github.com/zalandoresearch/fashion-mnist."
)


# ----------------------------------------------------------------------------------- CIFAR-10


def load_cifar10_npz(path: str | os.PathLike[str] | None = None) -> ImageArrays:
    """Load ``(x_train, y_train, x_test, y_test)`` from the shared ``cifar10.npz``.

    Images are uint8 (n, 32, 32, 3) RGB (HWC); labels int64. The archive is class-sorted:
    shuffle before use (``image_split`` does).
    """
    p = require_file(
        path if path is not None else default_data_file(CIFAR10_FILE),
        "CIFAR-10 archive",
        _CIFAR_NPZ_HOW,
    )
    x_tr, y_tr, x_te, y_te = read_npz(p, ("x_train", "y_train", "x_test", "y_test"), "CIFAR-10")
    for x, y in ((x_tr, y_tr), (x_te, y_te)):
        if x.ndim != 4 or x.shape[1:] != (32, 32, 3) or len(x) != len(y):
            raise ValueError(f"{p}: unexpected CIFAR-10 shapes {x.shape} / {y.shape}")
    return x_tr, y_tr.astype(np.int64), x_te, y_te.astype(np.int64)


class UnsafePickleError(ValueError):
    """A CIFAR-10 batch file that asks to load something other than NumPy arrays and plain data."""


try:
    from numpy._core.multiarray import _reconstruct as _RECONSTRUCT
except ImportError:  # pragma: no cover - NumPy < 2
    from numpy.core.multiarray import _reconstruct as _RECONSTRUCT


def _numpy_reconstruct(subtype, *args):
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"refusing to rebuild an array of type {subtype!r}")
    return _RECONSTRUCT(subtype, *args)


def _numpy_dtype(*args):
    dt = np.dtype(*args)
    if dt.hasobject:
        raise UnsafePickleError("refusing an array of Python objects (dtype 'O')")
    return dt


def _latin1_encode(text, encoding="utf-8", *rest):
    if not isinstance(text, str) or str(encoding).lower().replace("-", "") != "latin1" or rest:
        raise UnsafePickleError("refusing a _codecs.encode call other than latin-1 bytes")
    return text.encode("latin-1")


def _frombuffer(buf, dtype, shape, order):
    return np.frombuffer(buf, dtype=_numpy_dtype(dtype)).reshape(shape, order=order).copy()


# the only globals a CIFAR-10 python batch may name (NumPy arrays, their dtypes, bytes)
_SAFE_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _latin1_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles NumPy arrays, bytes, str, numbers, lists, tuples and dicts; nothing else (a
    crafted pickle cannot import or call anything)."""

    def find_class(self, module: str, name: str):  # noqa: D102
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load {module}.{name}: a CIFAR-10 batch holds only NumPy arrays "
                "and plain data (this file may be malicious)"
            ) from None

    def persistent_load(self, pid):  # noqa: D102
        raise UnsafePickleError("refusing a pickle with persistent ids")


def safe_unpickle(f) -> object:
    """``pickle.load(f, encoding="bytes")`` restricted to NumPy arrays and plain data."""
    return _RestrictedUnpickler(f, encoding="bytes").load()


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        try:
            d = safe_unpickle(f)
        except UnsafePickleError as e:
            raise UnsafePickleError(f"{path}: not loaded: {e}") from None
        except Exception as e:  # any unpickling failure means a corrupt file
            raise ValueError(f"{path}: not a readable CIFAR-10 python batch ({e})") from e
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise ValueError(f"{path}: not a CIFAR-10 python batch (no b'data' / b'labels')")
    if not isinstance(d[b"data"], np.ndarray) or d[b"data"].dtype.hasobject:
        raise ValueError(f"{path}: b'data' is not a numeric NumPy array")
    data = np.asarray(d[b"data"], dtype=np.uint8)
    labels = np.asarray(d[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise ValueError(f"{path}: data {data.shape} / labels {labels.shape} are not CIFAR-10")
    # rows are 1024 red, 1024 green, 1024 blue values, each a row-major 32x32 image (CHW)
    x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), labels


def load_cifar10_batches(dir: str | os.PathLike[str]) -> ImageArrays:
    """Load ``(x_train, y_train, x_test, y_test)`` from a standard ``cifar-10-batches-py``
    directory (pickles ``data_batch_1`` .. ``data_batch_5`` and ``test_batch``).

    Images are returned uint8 (n, 32, 32, 3) HWC like :func:`load_cifar10_npz`; labels int64.
    """
    d = require_dir(dir, "CIFAR-10 batches directory", _CIFAR_BATCHES_HOW)
    how = _CIFAR_BATCHES_HOW
    train = [
        _read_cifar_batch(require_file(d / f"data_batch_{i}", "CIFAR-10 training batch", how))
        for i in range(1, 6)
    ]
    x_te, y_te = _read_cifar_batch(require_file(d / "test_batch", "CIFAR-10 test batch", how))
    x_tr = np.concatenate([b[0] for b in train])
    y_tr = np.concatenate([b[1] for b in train])
    return x_tr, y_tr, x_te, y_te


# ------------------------------------------------------------------------------ Fashion-MNIST


def _find_idx(d: Path, stem: str) -> Path:
    """``d/stem`` or ``d/stem.gz`` (also with '.' in place of the '-' before 'idx')."""
    alt = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", alt, alt + ".gz"):
        if (d / name).is_file():
            return d / name
    return require_file(d / (stem + ".gz"), f"Fashion-MNIST file '{stem}[.gz]'", _FASHION_HOW)


def read_idx(path: str | os.PathLike[str], ndim: int | None = None) -> np.ndarray:
    """Read an IDX file of unsigned bytes (plain or gzip), checking magic number and size.

    Raises:
        ValueError: bad magic number, wrong number of dimensions, or wrong data length.
    """
    p = Path(path)
    try:
        if p.suffix == ".gz":
            with gzip.open(p, "rb") as f:
                raw = f.read()
        else:
            raw = p.read_bytes()
    except (OSError, EOFError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{p}: corrupt gzip/IDX file ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{p}: bad IDX magic number {raw[:4].hex()} (expected 000008xx, ubyte)")
    nd = raw[3]
    if ndim is not None and nd != ndim:
        raise ValueError(f"{p}: IDX file has {nd} dimensions, expected {ndim}")
    header = 4 + 4 * nd
    if len(raw) < header:
        raise ValueError(f"{p}: truncated IDX header")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=nd, offset=4))
    n = math.prod(shape)
    if len(raw) - header != n:
        raise ValueError(
            f"{p}: IDX data has {len(raw) - header} bytes, header shape {shape} needs {n} "
            "(truncated or corrupt file)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def load_fashion_mnist(dir: str | os.PathLike[str] | None = None) -> ImageArrays:
    """Load ``(x_train, y_train, x_test, y_test)`` from Fashion-MNIST IDX files.

    ``dir`` defaults to /usr/share/datasets/fashion-mnist (Debian package
    ``dataset-fashion-mnist``) and must hold ``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (plain or
    ``.gz``). Images are uint8 (n, 28, 28); labels int64.
    """
    d = require_dir(dir if dir is not None else FASHION_MNIST_DIR, "Fashion-MNIST", _FASHION_HOW)
    out = []
    for prefix in ("train", "t10k"):
        x = read_idx(_find_idx(d, f"{prefix}-images-idx3-ubyte"), ndim=3)
        y = read_idx(_find_idx(d, f"{prefix}-labels-idx1-ubyte"), ndim=1).astype(np.int64)
        if len(x) != len(y):
            raise ValueError(f"{d}: {prefix} has {len(x)} images but {len(y)} labels")
        out += [x, y]
    return out[0], out[1], out[2], out[3]


# ------------------------------------------------------------------------------------- splits


def standardise_images(x: np.ndarray | Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Per-image standardisation: (n, H, W[, C]) uint8 -> (n, C, H, W) float tensor.

    Each image has its mean (over all pixels and channels) subtracted and is divided by
    max(std, 1/sqrt(numel)) (population std), as TensorFlow's per_image_standardization.
    """
    t = torch.as_tensor(np.asarray(x)) if not isinstance(x, Tensor) else x
    if t.ndim == 3:
        t = t.unsqueeze(-1)
    if t.ndim != 4:
        raise ValueError(f"expected images of shape (n, H, W[, C]), got {tuple(t.shape)}")
    t = t.permute(0, 3, 1, 2).to(dtype).contiguous()
    flat = t.reshape(len(t), -1)
    floor = 1.0 / math.sqrt(flat.shape[1])
    mean = flat.mean(dim=1, keepdim=True)
    std = flat.std(dim=1, correction=0, keepdim=True).clamp_min(floor)
    flat.sub_(mean).div_(std)
    return t


def image_split(
    name: Literal["cifar10", "fashion-mnist"],
    path: str | os.PathLike[str] | None = None,
    n_train: int | None = None,
    n_val: int | None = None,
    subset: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Split:
    """Train / validation / test split of CIFAR-10 or Fashion-MNIST, per-image standardised.

    The training set is shuffled with ``seed`` (the CIFAR-10 archive is class-sorted); the first
    ``n_train`` images are training data, the next ``n_val`` validation; the test set is the
    official one. Defaults: CIFAR-10 40000 / 10000 / 10000, Fashion-MNIST 50000 / 10000 / 10000.

    ``path``: for CIFAR-10 the ``cifar10.npz`` file (default: shared data) or a
    ``cifar-10-batches-py`` directory; for Fashion-MNIST the IDX directory.
    ``subset=N`` keeps N training images and proportionally fewer validation and test images
    (at least 1000 each where available; test images drawn at random with ``seed``).

    x is (n, C, H, W) of ``dtype``; y is (n,) int64. ``meta`` holds ``classes``, ``n_classes``,
    ``image_shape`` (C, H, W) and the source indices ``train_index`` / ``val_index`` (into the
    original training set) and ``test_index`` (into the test set).
    """
    if name == "cifar10":
        if path is not None and Path(path).is_dir():
            x_tr, y_tr, x_te, y_te = load_cifar10_batches(path)
        else:
            x_tr, y_tr, x_te, y_te = load_cifar10_npz(path)
        classes = CIFAR10_CLASSES
    elif name in ("fashion-mnist", "fashion_mnist", "fashionmnist"):
        x_tr, y_tr, x_te, y_te = load_fashion_mnist(path)
        classes = FASHION_MNIST_CLASSES
    else:
        raise ValueError(f"unknown image data set {name!r}; use 'cifar10' or 'fashion-mnist'")

    n_total = len(x_tr)
    n_val = min(10000, n_total // 5) if n_val is None else n_val
    n_train = n_total - n_val if n_train is None else n_train
    if n_train < 1 or n_val < 0 or n_train + n_val > n_total:
        raise ValueError(f"n_train={n_train}, n_val={n_val} do not fit {n_total} images")
    n_test = len(x_te)
    if subset is not None:
        if subset < 1:
            raise ValueError(f"subset must be positive, got {subset}")
        frac = min(subset, n_train) / n_train
        n_train = min(subset, n_train)
        n_val = min(n_val, max(math.ceil(frac * n_val), 1000))
        n_test = min(n_test, max(math.ceil(frac * n_test), 1000))

    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_total)
    i_tr, i_va = perm[:n_train], perm[n_train : n_train + n_val]
    i_te = np.arange(len(x_te))
    if n_test < len(x_te):
        i_te = np.sort(rng.permutation(len(x_te))[:n_test])

    def _y(y: np.ndarray, i: np.ndarray) -> Tensor:
        return torch.from_numpy(y[i].astype(np.int64))

    x_train = standardise_images(x_tr[i_tr], dtype)
    return Split(
        x_train=x_train,
        y_train=_y(y_tr, i_tr),
        x_val=standardise_images(x_tr[i_va], dtype),
        y_val=_y(y_tr, i_va),
        x_test=standardise_images(x_te[i_te], dtype),
        y_test=_y(y_te, i_te),
        meta={
            "name": "cifar10" if name == "cifar10" else "fashion-mnist",
            "classes": list(classes),
            "n_classes": len(classes),
            "image_shape": tuple(x_train.shape[1:]),
            "train_index": i_tr.astype(np.int64),
            "val_index": i_va.astype(np.int64),
            "test_index": i_te.astype(np.int64),
            "seed": seed,
        },
    )


class ImageClassification(Problem):
    """CIFAR-10 or Fashion-MNIST classification (``name``): the split of :func:`image_split`
    (``[model] dtype`` sets the image dtype); the raw data is the checked path (CIFAR-10: the
    archive or a batches directory, Fashion-MNIST: the IDX directory), read per seed."""

    data_keys = frozenset({"n_train", "n_val", "subset"})

    def __init__(self, name: Literal["cifar10", "fashion-mnist"]) -> None:
        if name not in ("cifar10", "fashion-mnist"):
            raise ValueError(f"unknown image data set {name!r}; use 'cifar10' or 'fashion-mnist'")
        self.name = name

    def load(self, cfg: ExperimentConfig, data_path: str | None, progress: bool) -> Path:
        if self.name == "cifar10":
            if data_path is not None and Path(data_path).expanduser().is_dir():
                return Path(data_path).expanduser()
            p = data_path if data_path is not None else default_data_file(CIFAR10_FILE)
            return require_file(
                p, "CIFAR-10 data (cifar10.npz or a cifar-10-batches-py directory)",
                "It is the shared archive cifar10.npz (shared/data/README.md).")
        d = data_path if data_path is not None else FASHION_MNIST_DIR
        return require_dir(d, "Fashion-MNIST", "Install the Debian package dataset-fashion-mnist "
                           "(files under /usr/share/datasets/fashion-mnist).")

    def split(self, cfg: ExperimentConfig, raw: Path, seed: int) -> Split:
        d = cfg.data
        dtype = torch.float64 if cfg.model.get("dtype") == "float64" else torch.float32
        sub = d.get("subset")
        return image_split(self.name, raw, n_train=d.get("n_train"), n_val=d.get("n_val"),
                           subset=None if sub is None else int(sub), seed=int(seed), dtype=dtype)

    def figures(self, root: Path, summary: dict) -> tuple[list[Path], str]:
        """``confusion.png`` of the best-validation GNvpro run (:func:`confusion_figures`)."""
        return confusion_figures(root, summary, self.name)


_DISPLAY_NAMES = {"cifar10": "CIFAR-10", "fashion-mnist": "Fashion-MNIST"}


def _best_val(summary: dict, method: str, seed_dir: str) -> float:
    """The final validation metric of ``method``'s run ``seed_dir`` ("seed-N") in the summary."""
    for r in summary.get("methods", {}).get(method, []):
        if f"seed-{r['seed']}" == seed_dir:
            return float(r["val"])
    return math.nan


def confusion_figures(root: Path, summary: dict, name: str) -> tuple[list[Path], str]:
    """``confusion.png``: the class-normalised confusion matrix on the test set of the
    best-validation GNvpro run (else of any method, see ``report.best_run``) of the run
    directory ``root`` of the image experiment ``name``, and a one-line markdown note (method,
    seed, validation and test accuracy, per-class test accuracy); ([], "") if no run has a
    model.  The test images go through the network 500 at a time."""
    from ..errors import ExperimentError
    from ..report import best_run, confusion_figure, confusion_matrix, load_run, predict_classes

    best = best_run(root, summary)
    if best is None:
        return [], ""
    method, d = best
    try:
        _, _, data, model = load_run(d, method)
    except FileNotFoundError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExperimentError(f"{d}: the test images cannot be read here ({first})") from None
    default = CIFAR10_CLASSES if name == "cifar10" else FASHION_MNIST_CLASSES
    names = [str(c) for c in (data.meta or {}).get("classes", default)]
    y = data.y_test.numpy()
    pred = predict_classes(model, data.x_test, batch=500)
    cm = confusion_matrix(y, pred, len(names))
    acc = float((pred == y).mean())
    shown = _DISPLAY_NAMES.get(name, name)
    path = confusion_figure(
        root / "confusion.png", cm, names,
        f"{shown} test set ({len(y)} images), rows normalised: {method} {d.name}, "
        f"test accuracy {acc:.4f}")
    per_class = ", ".join(f"{c} {cm[i, i]:.3f}" for i, c in enumerate(names))
    note = (f"Confusion matrix (test set, {len(y)} images, rows normalised): {method} {d.name} "
            f"(best validation accuracy {_best_val(summary, method, d.name):.4f}), test "
            f"accuracy {acc:.4f}; per class: {per_class}.\n")
    return [path], note
