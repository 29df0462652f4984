"""Tests for the data problems: ellipse, Indian Pines, CIFAR-10 / Fashion-MNIST loaders."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from gnvpro_experiments.problems.ellipse import ellipse_data
from gnvpro_experiments.problems.images import (
    image_split,
    load_cifar10_batches,
    load_cifar10_npz,
    load_fashion_mnist,
    read_idx,
    standardise_images,
)
from gnvpro_experiments.problems.indian_pines import (
    CLASS_NAMES,
    all_labelled_pixels,
    indian_pines_split,
    load_indian_pines,
    standardise_pixels,
)
from gnvpro_experiments.problems.paths import default_data_file, require_file

IP_FILE = default_data_file("indian_pines.npz")
CIFAR_FILE = default_data_file("cifar10.npz")
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
IP_COUNTS = [46, 1428, 830, 237, 483, 730, 28, 478, 20, 972, 2455, 593, 205, 1265, 386, 93]

needs_ip = pytest.mark.skipif(
    IP_FILE is None or not IP_FILE.is_file(),
    reason="shared data indian_pines.npz not found (set $GNVPRO_DATA or put it in ../shared/data)",
)
needs_cifar = pytest.mark.skipif(
    CIFAR_FILE is None or not CIFAR_FILE.is_file(),
    reason="shared data cifar10.npz not found (set $GNVPRO_DATA or put it in ../shared/data)",
)
needs_fashion = pytest.mark.skipif(
    not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)


# ------------------------------------------------------------------------------------ paths


def test_data_lookup_honours_the_environment(monkeypatch, tmp_path):
    for where in (tmp_path, tmp_path / "data"):  # $GNVPRO_DATA/name or $GNVPRO_DATA/data/name
        where.mkdir(exist_ok=True)
        (where / "x.npz").write_bytes(b"")
        monkeypatch.setenv("GNVPRO_DATA", str(tmp_path))
        assert default_data_file("x.npz") == where / "x.npz"
        (where / "x.npz").unlink()


def test_require_file_message(tmp_path):
    missing = tmp_path / "thing.npz"
    with pytest.raises(FileNotFoundError) as e:
        require_file(missing, "Thing data", "Get it from the moon.")
    msg = str(e.value)
    assert "thing.npz" in msg and "Thing data" in msg and "moon" in msg and "--data" in msg
    missing.write_bytes(b"x")
    assert require_file(missing, "Thing data", "") == missing


# ---------------------------------------------------------------------------------- ellipse


def test_ellipse_sizes_labels_geometry():
    s = ellipse_data(n_per_class=700, n_train=500, n_val=100, seed=3)
    assert s.sizes() == (500, 100, 800)
    assert s.x_train.shape == (500, 2) and s.x_train.dtype == torch.float64
    assert s.y_train.dtype == torch.int64 and s.y_train.shape == (500,)
    x = torch.cat([s.x_train, s.x_val, s.x_test])
    y = torch.cat([s.y_train, s.y_val, s.y_test])
    assert int(y.sum()) == 700  # exactly balanced overall
    assert abs(s.y_train.float().mean().item() - 0.5) < 0.08  # roughly balanced after shuffle
    rho = x[:, 0] ** 2 + (x[:, 1] / 0.4) ** 2
    assert bool((rho[y == 1] <= 1 + 1e-12).all())
    assert bool((rho[y == 0] >= 1 - 1e-12).all())
    assert bool((rho[y == 0] <= 4 + 1e-12).all())


def test_ellipse_defaults_and_determinism():
    a = ellipse_data()
    assert a.sizes() == (5000, 1000, 8000)
    b = ellipse_data(seed=0, dtype=torch.float32)
    assert torch.equal(a.x_train.float(), b.x_train) and torch.equal(a.y_test, b.y_test)
    c = ellipse_data(seed=1)
    assert not torch.equal(a.x_train, c.x_train)


# ------------------------------------------------------------------------------ Indian Pines


@pytest.fixture(scope="module")
def ip_split():
    return indian_pines_split(IP_FILE, seed=0)


@needs_ip
def test_indian_pines_load_counts():
    cube, labels = load_indian_pines(IP_FILE)
    assert cube.shape == (145, 145, 200) and labels.shape == (145, 145)
    assert np.bincount(labels.ravel(), minlength=17)[1:].tolist() == IP_COUNTS
    assert int((labels == 0).sum()) == 10776


@needs_ip
def test_indian_pines_split_rule(ip_split):
    s = ip_split
    m = s.meta
    assert m["class_names"] == list(CLASS_NAMES) and len(CLASS_NAMES) == 16
    assert m["class_names"][0] == "Alfalfa" and m["class_names"][-1] == "Stone-Steel-Towers"
    assert m["image_shape"] == (145, 145) and m["class_counts"] == IP_COUNTS
    for c, count in enumerate(IP_COUNTS):
        nb = min(count - 10, 312)
        n_test = int(np.floor(0.2 * nb + 0.5))
        assert m["n_test"][c] == n_test
        assert m["n_train"][c] == nb - n_test
        assert m["n_val"][c] == count - nb
        assert int((s.y_train == c).sum()) == m["n_train"][c]
        assert int((s.y_val == c).sum()) == m["n_val"][c]
        assert int((s.y_test == c).sum()) == m["n_test"][c]
    assert s.sizes() == (2955, 6560, 734)
    assert s.x_train.shape == (2955, 200) and s.x_train.dtype == torch.float64
    assert s.y_train.dtype == torch.int64


@needs_ip
def test_indian_pines_split_disjoint_cover_and_consistent(ip_split):
    s, m = ip_split, ip_split.meta
    idx = [m["train_index"], m["val_index"], m["test_index"]]
    allidx = np.concatenate(idx)
    assert len(np.unique(allidx)) == len(allidx) == 10249  # disjoint and covering
    cube, labels = load_indian_pines(IP_FILE)
    flat = labels.ravel()
    x_all, y_all, pix_all = all_labelled_pixels(IP_FILE)
    assert x_all.shape == (10249, 200) and np.array_equal(np.sort(allidx), pix_all)
    assert np.array_equal(y_all.numpy(), flat[pix_all].astype(np.int64) - 1)
    xs, ys = (s.x_train, s.x_val, s.x_test), (s.y_train, s.y_val, s.y_test)
    for x, y, ix in zip(xs, ys, idx, strict=True):
        assert np.array_equal(y.numpy(), flat[ix].astype(np.int64) - 1)
        spectra = cube[ix // 145, ix % 145]
        assert torch.allclose(x, torch.from_numpy(standardise_pixels(spectra)))
    # per-pixel standardisation: mean 0, std 1 (no spectrum is flat)
    assert s.x_train.mean(dim=1).abs().max() < 1e-10
    std = s.x_val.std(dim=1, correction=0)
    assert torch.allclose(std, torch.ones_like(std))
    # seeded
    again = indian_pines_split(IP_FILE, seed=0)
    assert np.array_equal(again.meta["test_index"], m["test_index"])
    other = indian_pines_split(IP_FILE, seed=1)
    assert not np.array_equal(np.sort(other.meta["test_index"]), np.sort(m["test_index"]))


def test_standardise_pixels_floor():
    X = np.stack([np.arange(200.0), np.full(200, 7.0)])
    Z = standardise_pixels(X)
    assert np.allclose(Z.mean(axis=1), 0) and np.isclose(Z[0].std(), 1)
    assert np.all(Z[1] == 0)  # flat spectrum: floor avoids division by zero
    T = standardise_pixels(torch.from_numpy(X))
    assert torch.allclose(T, torch.from_numpy(Z))


def test_indian_pines_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="Indian Pines"):
        load_indian_pines(tmp_path / "indian_pines.npz")


# ----------------------------------------------------------------------------------- images


def _fake_images(rng, n, shape):
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)


@pytest.fixture
def fake_cifar(tmp_path):
    """A cifar-10-batches-py directory with 5 x 4 training and 3 test images."""
    rng = np.random.default_rng(0)
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    xs, ys = [], []
    for name, n in [(f"data_batch_{i}", 4) for i in range(1, 6)] + [("test_batch", 3)]:
        x = _fake_images(rng, n, (32, 32, 3))
        y = rng.integers(0, 10, size=n).tolist()
        data = x.transpose(0, 3, 1, 2).reshape(n, 3072)  # rows: R plane, G plane, B plane
        batch = {b"batch_label": name.encode(), b"labels": y, b"data": data}
        with open(d / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        xs.append(x)
        ys.append(np.array(y))
    return d, xs, ys


def test_cifar_batches_decode_exactly(fake_cifar):
    d, xs, ys = fake_cifar
    x_tr, y_tr, x_te, y_te = load_cifar10_batches(d)
    assert x_tr.shape == (20, 32, 32, 3) and x_tr.dtype == np.uint8
    assert np.array_equal(x_tr, np.concatenate(xs[:5])) and np.array_equal(x_te, xs[5])
    assert np.array_equal(y_tr, np.concatenate(ys[:5])) and np.array_equal(y_te, ys[5])
    assert y_tr.dtype == np.int64
    # spot-check channel order against the raw row layout: row = [R(1024), G(1024), B(1024)]
    with open(d / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"]
    assert x_te[1, 2, 5, 0] == raw[1, 2 * 32 + 5]
    assert x_te[1, 2, 5, 1] == raw[1, 1024 + 2 * 32 + 5]
    assert x_te[1, 2, 5, 2] == raw[1, 2048 + 2 * 32 + 5]


def test_cifar_batches_split(fake_cifar):
    d, xs, ys = fake_cifar
    s = image_split("cifar10", path=d, n_val=5, seed=1)
    assert s.sizes() == (15, 5, 3)
    assert s.x_train.shape == (15, 3, 32, 32) and s.x_train.dtype == torch.float32
    x_tr, y_tr = np.concatenate(xs[:5]), np.concatenate(ys[:5])
    i_tr, i_va = s.meta["train_index"], s.meta["val_index"]
    assert len(np.intersect1d(i_tr, i_va)) == 0
    assert np.array_equal(s.y_train.numpy(), y_tr[i_tr]) and s.y_train.dtype == torch.int64
    assert torch.allclose(s.x_val, standardise_images(x_tr[i_va]))
    assert s.meta["n_classes"] == 10 and s.meta["image_shape"] == (3, 32, 32)


def test_cifar_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        load_cifar10_batches(tmp_path)
    with pytest.raises(FileNotFoundError, match="CIFAR-10"):
        load_cifar10_npz(tmp_path / "cifar10.npz")


def _idx_bytes(a: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 8, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
    return header + a.tobytes()


def _write_fashion(d: Path, gz: bool, rng, n_train=12, n_test=5):
    d.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": _fake_images(rng, n_train, (28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": _fake_images(rng, n_test, (28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, a in arrays.items():
        if gz:
            with gzip.open(d / (name + ".gz"), "wb") as f:
                f.write(_idx_bytes(a))
        else:
            (d / name).write_bytes(_idx_bytes(a))
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_idx_decode_exactly(tmp_path, gz):
    arrays = _write_fashion(tmp_path / "fm", gz, np.random.default_rng(1))
    x_tr, y_tr, x_te, y_te = load_fashion_mnist(tmp_path / "fm")
    assert x_tr.shape == (12, 28, 28) and x_tr.dtype == np.uint8 and y_tr.dtype == np.int64
    assert np.array_equal(x_tr, arrays["train-images-idx3-ubyte"])
    assert np.array_equal(y_tr, arrays["train-labels-idx1-ubyte"])
    assert np.array_equal(x_te, arrays["t10k-images-idx3-ubyte"])
    assert np.array_equal(y_te, arrays["t10k-labels-idx1-ubyte"])
    s = image_split("fashion-mnist", path=tmp_path / "fm", n_train=8, n_val=4)
    assert s.sizes() == (8, 4, 5) and s.x_test.shape == (5, 1, 28, 28)
    assert np.array_equal(s.y_test.numpy(), arrays["t10k-labels-idx1-ubyte"])


def test_idx_corrupt(tmp_path):
    a = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    good = _idx_bytes(a)
    (tmp_path / "good").write_bytes(good)
    assert np.array_equal(read_idx(tmp_path / "good", ndim=3), a)
    (tmp_path / "magic").write_bytes(b"\x01\x02" + good[2:])
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "magic")
    (tmp_path / "dtype").write_bytes(b"\x00\x00\x0d" + good[3:])  # float32 type code
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "dtype")
    with pytest.raises(ValueError, match="dimensions"):
        read_idx(tmp_path / "good", ndim=1)
    (tmp_path / "short").write_bytes(good[:-10])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short")
    gz = gzip.compress(good)
    (tmp_path / "short.gz").write_bytes(gz[: len(gz) // 2])
    with pytest.raises(ValueError):
        read_idx(tmp_path / "short.gz")
    # a corrupt file inside a data directory surfaces from the loader too
    d = tmp_path / "fm"
    _write_fashion(d, False, np.random.default_rng(2))
    (d / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05\x01")
    with pytest.raises(ValueError, match="t10k-labels"):
        load_fashion_mnist(d)


def test_fashion_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_fashion_mnist(tmp_path / "empty")
    with pytest.raises(ValueError, match="unknown"):
        image_split("mnist", path=tmp_path)  # type: ignore[arg-type]


def test_standardise_images():
    rng = np.random.default_rng(0)
    x = _fake_images(rng, 6, (8, 8, 3))
    x[5] = 17  # constant image: the floor 1/sqrt(numel) avoids division by zero
    z = standardise_images(x, dtype=torch.float64)
    assert z.shape == (6, 3, 8, 8) and z.dtype == torch.float64
    assert z.reshape(6, -1).mean(1).abs().max() < 1e-12
    assert torch.allclose(z[:5].reshape(5, -1).std(1, correction=0), torch.ones(5, dtype=z.dtype))
    assert bool((z[5] == 0).all())
    # HWC -> CHW: channel 2 of z is the standardised third channel of x
    xf = x[0].astype(np.float64)
    expect = (xf[:, :, 2] - xf.mean()) / xf.std()
    assert np.allclose(z[0, 2].numpy(), expect)
    g = standardise_images(_fake_images(rng, 2, (5, 7)))
    assert g.shape == (2, 1, 5, 7) and g.dtype == torch.float32


@needs_cifar
def test_real_cifar10_npz():
    with np.load(CIFAR_FILE) as d:  # lazy: only the test arrays are decompressed here
        x_te, y_te, classes = d["x_test"], d["y_test"], d["classes"]
    assert x_te.shape == (10000, 32, 32, 3) and x_te.dtype == np.uint8
    assert np.bincount(y_te).tolist() == [1000] * 10 and classes[0] == "airplane"
    s = image_split("cifar10", subset=1000, seed=0)
    assert s.sizes() == (1000, 1000, 1000)
    assert s.x_train.shape == (1000, 3, 32, 32) and s.y_train.dtype == torch.int64
    assert len(np.unique(s.y_train.numpy())) == 10  # shuffled, not class-sorted
    assert len(np.unique(s.y_test.numpy())) == 10
    assert s.x_train.reshape(1000, -1).mean(1).abs().max() < 1e-4


@needs_cifar
def test_real_cifar10_loader_shapes():
    x_tr, y_tr, x_te, y_te = load_cifar10_npz(CIFAR_FILE)
    assert x_tr.shape == (50000, 32, 32, 3) and y_tr.shape == (50000,)
    assert x_te.shape == (10000, 32, 32, 3) and y_te.dtype == np.int64


@needs_fashion
def test_real_fashion_mnist():
    x_tr, y_tr, x_te, y_te = load_fashion_mnist()
    assert x_tr.shape == (60000, 28, 28) and x_te.shape == (10000, 28, 28)
    assert np.bincount(y_tr).tolist() == [6000] * 10
    assert np.bincount(y_te).tolist() == [1000] * 10
