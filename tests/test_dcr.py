"""Tests of the DCR finite-volume simulator and data set (src/gnvpro_experiments/problems/dcr/)."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from gnvpro_experiments.problems import dcr
from gnvpro_experiments.problems.dcr import (
    N_MEASUREMENTS,
    DCRConfig,
    Mesh2D,
    assemble_operator,
    build_mesh,
    cached_dcr,
    dipole_response,
    divergence,
    electrode_layout,
    forward_operator,
    generate_dcr,
    gradient,
    harmonic_average,
    load_dcr,
    log_conductivity,
    save_dcr,
    simulate,
    solve_potentials,
)


def _stretched_mesh(nx: int, nz: int, rng: np.random.Generator) -> Mesh2D:
    return Mesh2D(rng.uniform(0.5, 2.0, nx), rng.uniform(0.5, 2.0, nz), x0=-3.0, z0=0.0)


# ---------------------------------------------------------------------------------------------
# the discrete operator
# ---------------------------------------------------------------------------------------------


def test_operator_symmetric_psd_with_constant_null_space() -> None:
    rng = np.random.default_rng(0)
    mesh = _stretched_mesh(9, 7, rng)
    m = np.exp(rng.normal(0.0, 1.0, mesh.n_cells))
    A = assemble_operator(m, mesh).toarray()
    assert A.shape == (63, 63)
    np.testing.assert_array_equal(A, A.T)
    scale = np.abs(A).max()
    assert np.abs(A @ np.ones(mesh.n_cells)).max() < 1e-13 * scale
    lam, vec = np.linalg.eigh(A)
    assert lam[0] > -1e-12 * lam[-1]
    # exactly one (numerically) zero eigenvalue, and it belongs to the constants
    assert abs(lam[0]) < 1e-12 * lam[-1]
    assert lam[1] > 1e-4 * lam[-1]
    v = vec[:, 0] * np.sign(vec[0, 0])
    np.testing.assert_allclose(v, np.full(mesh.n_cells, 1 / np.sqrt(mesh.n_cells)), atol=1e-10)


def test_operator_is_minus_div_m_grad() -> None:
    rng = np.random.default_rng(1)
    mesh = _stretched_mesh(6, 5, rng)
    m = np.exp(rng.normal(size=mesh.n_cells))
    D, G = divergence(mesh), gradient(mesh)
    mf = harmonic_average(m, mesh)
    A = assemble_operator(m, mesh).toarray()
    np.testing.assert_allclose(A, -(D @ np.diag(mf) @ G), rtol=1e-13, atol=1e-13 * np.abs(A).max())
    # G = -diag(1 / (a_f d_f)) D^T: the gradient is the negative adjoint of the divergence
    faces = dcr.finite_volume._faces(mesh)
    np.testing.assert_allclose(
        G.toarray(), -np.diag(1 / (faces.length * faces.dist)) @ D.toarray().T, rtol=1e-14
    )
    # divergence of a constant field in x: zero net flux in interior cells
    assert D.shape == (mesh.n_cells, faces.n)
    assert G.shape == (faces.n, mesh.n_cells)
    np.testing.assert_allclose(G @ (3.0 * np.ones(mesh.n_cells)), 0.0, atol=1e-14)


def test_harmonic_average_is_series_resistance() -> None:
    mesh = Mesh2D(np.array([1.0, 3.0]), np.array([1.0]))
    mf = harmonic_average(np.array([2.0, 0.5]), mesh)
    # one x-face: (1 + 3) / (1/2 + 3/0.5)
    np.testing.assert_allclose(mf, [4.0 / (0.5 + 6.0)])
    const = harmonic_average(np.full(20, 0.7), Mesh2D.uniform(5, 4, 2.0, 1.0))
    np.testing.assert_allclose(const, 0.7)
    with pytest.raises(ValueError, match="positive"):
        harmonic_average(np.array([1.0, -1.0]), mesh)
    with pytest.raises(ValueError, match="shape"):
        harmonic_average(np.ones(3), mesh)


def _manufactured_errors(meshes: list[Mesh2D], lx: float, lz: float) -> np.ndarray:
    """Max-norm and discrete L2 errors for u = cos(pi x / lx) cos(pi z / lz) (zero normal
    derivative on the boundary), m = 2 + sin(2x) cos(3z), q = -div(m grad u)."""
    out = []
    k1, k2 = np.pi / lx, np.pi / lz
    for mesh in meshes:
        x, z = mesh.cell_centres()
        u = np.cos(k1 * x) * np.cos(k2 * z)
        ux = -k1 * np.sin(k1 * x) * np.cos(k2 * z)
        uz = -k2 * np.cos(k1 * x) * np.sin(k2 * z)
        m = 2.0 + np.sin(2 * x) * np.cos(3 * z)
        mx = 2 * np.cos(2 * x) * np.cos(3 * z)
        mz = -3 * np.sin(2 * x) * np.sin(3 * z)
        q = -(m * (-(k1**2 + k2**2)) * u + mx * ux + mz * uz)
        vol = mesh.volumes()
        b = vol * q
        b -= b.mean()  # the discrete compatibility condition (the mean is O(h^2))
        uh = solve_potentials(m, mesh, b)  # gauge: sum V u = 0
        err = uh - (u - (vol @ u) / vol.sum())
        out.append([np.abs(err).max(), np.sqrt(vol @ err**2)])
    return np.array(out)


def test_second_order_convergence_uniform_mesh() -> None:
    lx, lz = 2.0, 1.0
    meshes = [Mesh2D.uniform(n, n // 2, lx, lz) for n in (16, 32, 64)]
    err = _manufactured_errors(meshes, lx, lz)
    order = np.log2(err[:-1] / err[1:])
    assert np.all(order > 1.8), order
    assert err[-1, 0] < 1e-3


def test_second_order_convergence_smoothly_stretched_mesh() -> None:
    lx, lz = 2.0, 1.0

    def nodes(n: int, length: float) -> np.ndarray:
        s = np.linspace(0.0, 1.0, n + 1)
        return length * (s + 0.15 * np.sin(2 * np.pi * s))  # a smooth monotone map of [0, 1]

    meshes = [Mesh2D(np.diff(nodes(n, lx)), np.diff(nodes(n // 2, lz))) for n in (32, 64, 128)]
    err = _manufactured_errors(meshes, lx, lz)
    order = np.log2(err[:-1] / err[1:])
    assert np.all(order > 1.8), order


def test_solve_rejects_incompatible_rhs() -> None:
    mesh = Mesh2D.uniform(4, 3, 1.0, 1.0)
    b = np.zeros(mesh.n_cells)
    b[0] = 1.0
    with pytest.raises(ValueError, match="sum to zero"):
        solve_potentials(np.ones(mesh.n_cells), mesh, b)


# ---------------------------------------------------------------------------------------------
# the survey
# ---------------------------------------------------------------------------------------------


def test_reciprocity() -> None:
    cfg = DCRConfig()
    mesh = build_mesh(cfg)
    m = np.exp(log_conductivity(np.array([1.7, 55.0, -40.0]), mesh, cfg))
    lay = electrode_layout(cfg)
    rng = np.random.default_rng(2)
    pairs = [
        (lay["source_cells"][3], lay["receiver_cells"][30]),
        (lay["source_cells"][20], lay["receiver_cells"][5]),
        (rng.integers(0, mesh.n_cells, 2), rng.integers(0, mesh.n_cells, 2)),  # buried
    ]
    for src, rec in pairs:
        forward = dipole_response(m, mesh, [src], [rec])[0, 0]
        swapped = dipole_response(m, mesh, [rec], [src])[0, 0]
        assert abs(forward) > 1e-6
        assert abs(forward - swapped) <= 1e-10 * abs(forward)


def test_layout_and_mesh() -> None:
    cfg = DCRConfig()
    assert (cfg.n_sources, cfg.n_receivers, cfg.n_measurements) == (21, 42, N_MEASUREMENTS)
    mesh = build_mesh(cfg)
    assert (mesh.nx, mesh.nz) == (109, 42)
    lay = electrode_layout(cfg)
    xc, zc = mesh.cell_centres()
    np.testing.assert_allclose(xc[lay["receiver_cells"]], lay["receiver_dipole_x"], atol=1e-9)
    np.testing.assert_allclose(xc[lay["source_cells"]], lay["source_x"], atol=1e-9)
    assert np.all(zc[lay["source_cells"]] == cfg.cell_size / 2)
    np.testing.assert_allclose(lay["receiver_x"], np.arange(-210.0, 211.0, 10.0))
    np.testing.assert_allclose(lay["source_x"][:, 1], 5.0 + 10.0 * np.arange(21))
    np.testing.assert_allclose(lay["source_x"][:, 0], -lay["source_x"][:, 1])
    # current and receiver electrodes never share a cell
    assert not set(lay["source_cells"].ravel()) & set(lay["receiver_cells"].ravel())
    # the anomaly (radius 25 m) stays inside the uniform core for every prior draw
    assert cfg.depth_range[1] + cfg.anomaly_radius <= cfg.core_depth_cells * cfg.cell_size
    assert cfg.depth_range[0] - cfg.anomaly_radius > 0


def test_forward_operator() -> None:
    cfg = DCRConfig()
    A, mesh = forward_operator(np.array([1.0, 60.0, 0.0]), cfg)
    assert A.shape == (mesh.n_cells, mesh.n_cells) == (4578, 4578)
    assert abs(A - A.T).max() == 0.0
    assert np.abs(A @ np.ones(mesh.n_cells)).max() < 1e-12 * abs(A).max()


def test_background_matches_half_space_solution() -> None:
    """With zero contrast, the data match the analytic potential of line sources in a uniform
    half-space (electrodes buried at half a cell, image sources above the surface) to 5 %."""
    cfg = DCRConfig()
    d = simulate(np.array([[0.0, 80.0, 0.0]]), cfg).reshape(cfg.n_sources, cfg.n_receivers)
    lay = electrode_layout(cfg)
    depth = cfg.cell_size / 2

    def pot(xs: np.ndarray, xr: np.ndarray) -> np.ndarray:
        r, r_img = np.abs(xr - xs), np.hypot(xr - xs, 2 * depth)
        return -cfg.current / (2 * np.pi * cfg.sigma_background) * (np.log(r) + np.log(r_img))

    a, b = lay["source_x"][:, :1], lay["source_x"][:, 1:]
    mm, nn = lay["receiver_dipole_x"][:, 0], lay["receiver_dipole_x"][:, 1]
    exact = pot(a, mm) - pot(b, mm) - pot(a, nn) + pot(b, nn)
    rel = np.abs(d - exact).max(axis=1) / np.abs(exact).max(axis=1)
    assert np.all(rel < 0.05), rel


def test_simulate_matches_direct_solve() -> None:
    cfg = DCRConfig()
    y = np.array([[-1.2, 90.0, 100.0], [1.9, 45.0, -130.0]])
    d = simulate(y, cfg)
    mesh = build_mesh(cfg)
    lay = electrode_layout(cfg)
    for yi, di in zip(y, d, strict=True):
        m = np.exp(log_conductivity(yi, mesh, cfg))
        ref = dipole_response(m, mesh, lay["source_cells"], lay["receiver_cells"]).ravel()
        np.testing.assert_allclose(di, ref, rtol=1e-10, atol=1e-12 * np.abs(ref).max())


def test_data_depend_smoothly_on_y() -> None:
    """Second differences of d(y + t e_i) shrink like t^2 (a Taylor test)."""
    cfg = DCRConfig()
    y0 = np.array([0.8, 70.0, 20.0])
    steps = np.array([0.2, 4.0, 4.0])
    for i in range(3):
        ratios = []
        for t in (steps[i], steps[i] / 2):
            ys = y0 + np.outer([0.0, 1.0, 2.0], np.eye(3)[i] * t)
            d = simulate(ys, cfg)
            ratios.append(np.abs(d[2] - 2 * d[1] + d[0]).max())
        assert 3.0 < ratios[0] / ratios[1] < 5.0, (i, ratios)


def test_anomaly_changes_data() -> None:
    cfg = DCRConfig()
    d = simulate(np.array([[0.0, 60.0, 0.0], [2.0, 60.0, 0.0], [-2.0, 60.0, 0.0]]), cfg)
    # a conductor lowers, a resistor raises the largest-dipole data near the anomaly
    k = cfg.n_sources - 1
    row = slice(k * cfg.n_receivers, (k + 1) * cfg.n_receivers)
    mid = slice(row.start + 18, row.start + 24)
    assert np.all(np.abs(d[1, mid]) < np.abs(d[0, mid]))
    assert np.all(np.abs(d[2, mid]) > np.abs(d[0, mid]))


# ---------------------------------------------------------------------------------------------
# data sets
# ---------------------------------------------------------------------------------------------


def test_generate_shapes_range_and_prior() -> None:
    cfg = DCRConfig()
    data = generate_dcr(8, seed=1, progress=False)
    Y, D = data["Y"], data["D"]
    assert Y.shape == (8, 3) and D.shape == (8, N_MEASUREMENTS)
    assert Y.dtype == np.float64 and D.dtype == np.float64
    assert np.all(np.isfinite(D))
    assert np.all(Y >= cfg.param_low) and np.all(Y <= cfg.param_high)
    # potential differences of a 1 A (per m) source in ~100 ohm m ground: volts, not kV or nV
    assert 1e-3 < np.abs(D).max() < 1e3
    assert np.all(D.std(axis=0) > 0)  # every measurement varies across samples
    assert len({data["hash"]}) == 1 and len(data["hash"]) == 64
    json.dumps(data["config"])  # JSON-able
    assert data["config"] == cfg.to_dict() and data["n"] == 8 and data["seed"] == 1


def test_deterministic_and_seed_dependent() -> None:
    a = generate_dcr(4, seed=3, progress=False)
    b = generate_dcr(4, seed=3, progress=False)
    c = generate_dcr(4, seed=4, progress=False)
    assert np.array_equal(a["Y"], b["Y"]) and np.array_equal(a["D"], b["D"])
    assert a["hash"] == b["hash"]
    assert not np.array_equal(a["Y"], c["Y"]) and not np.array_equal(a["D"], c["D"])
    assert a["hash"] != c["hash"]


def test_workers_do_not_change_results(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dcr.simulation, "_CHUNK", 2)  # several chunks, so the process pool is used
    y = dcr.sample_prior(5, seed=7)
    assert np.array_equal(simulate(y, workers=2), simulate(y, workers=1))


def test_simulate_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="shape"):
        simulate(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="finite"):
        simulate(np.array([[np.nan, 60.0, 0.0]]))
    with pytest.raises(ValueError, match="odd"):
        DCRConfig(n_electrodes=42)
    with pytest.raises(ValueError, match="low < high"):
        DCRConfig(depth_range=(100.0, 50.0))


def test_config_roundtrip() -> None:
    cfg = DCRConfig(n_pad_x=5, contrast_range=(-1.0, 1.0))
    back = DCRConfig.from_dict(json.loads(cfg.to_json()))
    assert back == cfg and hash(back) == hash(cfg)
    with pytest.raises(ValueError, match="unknown"):
        DCRConfig.from_dict({"grid": 3})


@pytest.fixture(scope="module")
def small_data() -> dict:
    return generate_dcr(3, seed=5, progress=False)


def test_save_load_roundtrip(tmp_path, small_data) -> None:
    path = save_dcr(tmp_path / "sub" / "dcr.npz", small_data)
    assert path == tmp_path / "sub" / "dcr.npz" and path.is_file()
    back = load_dcr(path)
    for key in ("Y", "D"):
        assert np.array_equal(back[key], small_data[key])
    for key in ("config", "n", "seed", "hash", "version"):
        assert back[key] == small_data[key]


def test_load_rejects_corrupt_files(tmp_path, small_data) -> None:
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="gnvpro data dcr --n N --seed S --out"):
        load_dcr(garbage)

    good = save_dcr(tmp_path / "good.npz", small_data)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="regenerate"):
        load_dcr(truncated)

    # same keys and stored hash, one number changed: the hash check catches it
    with np.load(good) as z:
        fields = {k: z[k] for k in z.files}
    fields["D"] = fields["D"].copy()
    fields["D"][1, 7] += 1e-9
    tampered = tmp_path / "tampered.npz"
    with open(tampered, "wb") as fh:
        np.savez_compressed(fh, **fields)
    with pytest.raises(ValueError, match="hash.*gnvpro data dcr --n 3 --seed 5 --out"):
        load_dcr(tampered)

    with zipfile.ZipFile(tmp_path / "partial.npz", "w") as zf:
        zf.writestr("Y.npy", good.read_bytes()[:10])
    with pytest.raises(ValueError, match="incomplete|corrupt"):
        load_dcr(tmp_path / "partial.npz")

    with pytest.raises(FileNotFoundError, match="gnvpro data dcr"):
        load_dcr(tmp_path / "missing.npz")


def test_cached_dcr(tmp_path, monkeypatch) -> None:
    first = cached_dcr(tmp_path, 3, seed=5, progress=False)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and files[0].name.startswith("dcr_n3_seed5_")

    def boom(*args, **kwargs):
        raise AssertionError("cache miss: should have loaded the file")

    monkeypatch.setattr(dcr.dataset, "generate_dcr", boom)
    hit = cached_dcr(tmp_path, 3, seed=5, progress=False)
    assert hit["hash"] == first["hash"] and np.array_equal(hit["D"], first["D"])
    monkeypatch.undo()

    cached_dcr(tmp_path, 3, seed=6, progress=False)
    cached_dcr(tmp_path, 3, seed=5, config=DCRConfig(edge_width=3.0), progress=False)
    assert len(list(tmp_path.glob("*.npz"))) == 3

    files[0].write_bytes(b"corrupt")
    with pytest.warns(UserWarning, match="Regenerating"):
        again = cached_dcr(tmp_path, 3, seed=5, progress=False)
    assert again["hash"] == first["hash"]
    assert load_dcr(files[0])["hash"] == first["hash"]


def test_dcr_split(small_data) -> None:
    torch = pytest.importorskip("torch")
    data = generate_dcr(10, seed=0, progress=False)
    split = dcr.dcr_split(data, n_train=6, n_val=2, dtype=torch.float64)
    assert split.sizes() == (6, 2, 2)
    assert split.y_train.shape == (6, N_MEASUREMENTS)
    assert torch.allclose(split.y_train.mean(0), torch.zeros(N_MEASUREMENTS, dtype=torch.float64))
    assert float(split.x_train.abs().max()) <= 1.0
    mean = np.array(split.meta["target_mean"])
    np.testing.assert_allclose(split.y_test.numpy() + mean, data["D"][8:], rtol=1e-12)
    json.dumps(split.meta)
    raw = dcr.dcr_split(data, n_train=6, n_val=2, normalize_inputs=False, center_targets=False)
    assert raw.y_train.dtype == torch.float64
    np.testing.assert_array_equal(raw.x_val.numpy(), data["Y"][6:8])
    np.testing.assert_array_equal(raw.y_val.numpy(), data["D"][6:8])
    with pytest.raises(ValueError, match="cannot split"):
        dcr.dcr_split(data, n_train=8, n_val=5)
