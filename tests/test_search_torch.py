"""The torch search and k-means paths (used on GPUs) against the faiss ones (CPU): same results.

Every test that takes ``device`` runs on "cpu" and, where CUDA is present, on "cuda". Data whose
arithmetic is exact in float32 (multiples of 1/2) has many exactly tied distances, so the
tie order (ascending database index) is checked as well as the values, bit for bit.
"""

from __future__ import annotations

import warnings

import faiss
import numpy as np
import pytest
import torch

from vprkit.errors import VprkitError
from vprkit.evaluate.evaluation import evaluate_file
from vprkit.extract.clusters import NETVLAD_KMEANS_ITERATIONS, torch_init_netvlad
from vprkit.models import NetVLAD
from vprkit.search import exact as search
from vprkit.search import index as index_module
from vprkit.search.exact import blocked_search, faiss_blocked_search, torch_blocked_search
from vprkit.search.kmeans import faiss_kmeans, faiss_permutation, kmeans, torch_kmeans
from vprkit.testing import write_descriptor_file


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: many small operations on a shared machine are faster so."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(params=["cpu", "cuda"])
def device(request) -> str:
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    return request.param


def coarse(rng, shape) -> np.ndarray:
    """Values -1, -1/2, 0, 1/2, 1: every distance is exact in float32, and many are equal."""
    return (rng.integers(-2, 3, shape) / 2).astype(np.float32)


def blocks_of(db, size: int):
    return [(s, db[s : s + size]) for s in range(0, len(db), size)]


def reference(q, db, k):
    """Squared L2 in float64, ranked by (distance, index); -1/inf beyond the database."""
    d = ((q[:, None, :].astype(np.float64) - db[None].astype(np.float64)) ** 2).sum(-1)
    cols = np.arange(len(db))
    order = np.array([np.lexsort((cols, row)) for row in d])[:, :k]
    dist = np.take_along_axis(d, order, axis=1)
    pad = k - order.shape[1]
    return (
        np.pad(dist, ((0, 0), (0, pad)), constant_values=np.inf),
        np.pad(order, ((0, 0), (0, pad)), constant_values=-1),
    )


@pytest.fixture(scope="module")
def tied():
    rng = np.random.default_rng(0)
    return coarse(rng, (40, 12)), coarse(rng, (1500, 12))


class TestExactSearch:
    @pytest.mark.parametrize("block", [3, 7, 256, 1500, 4000])
    @pytest.mark.parametrize("k", [1, 10, 300])
    def test_equals_faiss_and_the_tie_order(self, device, tied, block, k):
        q, db = tied
        ref_d, ref_i = reference(q, db, k)
        d_sorted = ((q[:, None] - db[None]) ** 2).sum(-1)
        d_sorted.sort(axis=1)
        assert (d_sorted[:, k - 1] == d_sorted[:, k]).sum() > 5  # ties at the cut are tested
        f_d, f_i = faiss_blocked_search(q, blocks_of(db, block), k)
        t_d, t_i = torch_blocked_search(q, blocks_of(db, block), k, device)
        np.testing.assert_array_equal(t_i, ref_i)
        np.testing.assert_array_equal(f_i, ref_i)
        np.testing.assert_array_equal(t_d, f_d)
        np.testing.assert_array_equal(t_d, ref_d.astype(np.float32))
        assert t_d.dtype == np.float32 and t_i.dtype == np.int64

    @pytest.mark.parametrize("tile, chunk", [(1, 1), (40 * 3, 40), (97, 7), (10**6, 4096)])
    def test_tiles_and_query_chunks(self, device, tied, tile, chunk, monkeypatch):
        q, db = tied
        monkeypatch.setattr(search, "QUERY_CHUNK", chunk)
        got = torch_blocked_search(q, blocks_of(db[:300], 128), 20, device, tile_elements=tile)
        want = reference(q, db[:300], 20)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0].astype(np.float32))

    def test_duplicate_rows_rank_by_index(self, device):
        db = np.zeros((12, 4), np.float32)
        db[[9, 2, 5, 11]] = 1.0  # four equal nearest rows, in three blocks
        q = np.ones((3, 4), np.float32)
        for size in (1, 4, 12):
            _, f_i = faiss_blocked_search(q, blocks_of(db, size), 3)
            _, t_i = torch_blocked_search(q, blocks_of(db, size), 3, device)
            assert t_i.tolist() == f_i.tolist() == [[2, 5, 9]] * 3

    @pytest.mark.parametrize("block", [2, 5, 100])
    def test_k_beyond_the_database_pads_with_minus_one_and_inf(self, device, tied, block):
        q, db = tied[0], tied[1][:9]
        f_d, f_i = faiss_blocked_search(q, blocks_of(db, block), 14)
        t_d, t_i = torch_blocked_search(q, blocks_of(db, block), 14, device)
        np.testing.assert_array_equal(t_i, f_i)
        np.testing.assert_array_equal(t_d, f_d)
        assert (t_i[:, 9:] == -1).all() and np.isinf(t_d[:, 9:]).all()
        assert sorted(t_i[0, :9].tolist()) == list(range(9))

    def test_no_blocks(self, device):
        t_d, t_i = torch_blocked_search(np.ones((2, 3), np.float32), [], 4, device)
        assert (t_i == -1).all() and np.isinf(t_d).all()

    def test_float16_rows(self, device, tied):
        q, db = tied
        half = db.astype(np.float16)  # exact in float16
        assert half.dtype == np.float16
        f_d, f_i = faiss_blocked_search(q, blocks_of(half, 100), 15)
        t_d, t_i = torch_blocked_search(q, blocks_of(half, 100), 15, device)
        np.testing.assert_array_equal(t_i, f_i)
        np.testing.assert_array_equal(t_d, f_d)
        np.testing.assert_array_equal(t_i, reference(q, db, 15)[1])

    def test_float16_rows_of_real_values_are_widened_exactly(self, device):
        rng = np.random.default_rng(3)
        db = rng.standard_normal((500, 32)).astype(np.float16)
        q = rng.standard_normal((30, 32)).astype(np.float32)
        t_d, t_i = torch_blocked_search(q, blocks_of(db, 64), 10, device)
        f_d, f_i = faiss_blocked_search(q, blocks_of(db.astype(np.float32), 64), 10)
        np.testing.assert_array_equal(t_i, f_i)
        np.testing.assert_allclose(t_d, f_d, rtol=1e-5, atol=1e-4)

    def test_normalised_descriptors_match_to_float_tolerance(self, device):
        rng = np.random.default_rng(1)
        db = rng.standard_normal((4000, 256)).astype(np.float32)
        db /= np.linalg.norm(db, axis=1, keepdims=True)
        q = db[rng.choice(4000, 200, replace=False)] + 0.3 * rng.standard_normal((200, 256))
        q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
        f_d, f_i = faiss_blocked_search(q, blocks_of(db, 1000), 25)
        t_d, t_i = torch_blocked_search(q, blocks_of(db, 1000), 25, device)
        np.testing.assert_allclose(t_d, f_d, rtol=0, atol=2e-6)
        # the same neighbours; a swap only between distances equal to round-off
        exact = ((q[:, None].astype(np.float64) - db[t_i].astype(np.float64)) ** 2).sum(-1)
        differ = t_i != f_i
        assert differ.mean() < 0.005
        np.testing.assert_allclose(exact[differ], f_d[differ], atol=2e-6)
        assert (t_i[:, 0] == f_i[:, 0]).all()

    def test_database_kept_on_the_device(self, device, tied):
        q, db = tied
        on_device = torch.from_numpy(db).to(device)
        got = torch_blocked_search(q, [(0, on_device)], 12, device)
        np.testing.assert_array_equal(got[1], reference(q, db, 12)[1])
        f_d, f_i = faiss_blocked_search(q, [(0, on_device)], 12)  # copied back for faiss
        np.testing.assert_array_equal(f_i, got[1])

    def test_dimension_mismatch(self, device):
        with pytest.raises(ValueError, match="5 dimensions, queries 4"):
            torch_blocked_search(np.ones((2, 4), np.float32), [(0, np.ones((3, 5)))], 1, device)

    def test_reduced_precision_setting_is_overridden_and_restored(self, device, tied):
        q, db = tied
        saved = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("medium")
        try:
            got = torch_blocked_search(q, blocks_of(db, 500), 10, device)
            assert torch.get_float32_matmul_precision() == "medium"
        finally:
            torch.set_float32_matmul_precision(saved)
        np.testing.assert_array_equal(got[1], reference(q, db, 10)[1])


class TestDeviceChoice:
    def test_cpu_is_faiss(self, tied, monkeypatch):
        monkeypatch.setattr(search, "torch_blocked_search", _fail)
        q, db = tied
        for dev in ("cpu", torch.device("cpu")):
            np.testing.assert_array_equal(
                blocked_search(q, blocks_of(db, 99), 5, dev)[1], reference(q, db, 5)[1]
            )

    def test_auto(self, tied, monkeypatch):
        monkeypatch.setattr(
            search, "torch_blocked_search" if not torch.cuda.is_available() else "faiss_blocked_search", _fail
        )
        q, db = tied
        got = blocked_search(q, blocks_of(db, 99), 5)  # auto, the default
        np.testing.assert_array_equal(got[1], reference(q, db, 5)[1])

    @pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
    def test_cuda_without_cuda_is_one_clear_error(self, tied):
        with pytest.raises(VprkitError, match="CUDA is not available"):
            blocked_search(tied[0], [(0, tied[1])], 3, "cuda")
        with pytest.raises(VprkitError, match="unknown device"):
            blocked_search(tied[0], [(0, tied[1])], 3, "gpu")

    def test_evaluate_file_on_each_path(self, device, tmp_path, monkeypatch):
        rng = np.random.default_rng(5)
        path = write_descriptor_file(tmp_path / "d.h5", coarse(rng, (120, 8)), coarse(rng, (30, 8)))
        faiss_result = evaluate_file(path, recalls=(1, 5), block_rows=16, device="cpu", bootstrap=0)
        if device == "cpu":  # the torch path on a CPU, which blocked_search gives to faiss
            monkeypatch.setattr(
                search, "faiss_blocked_search", lambda q, b, k: torch_blocked_search(q, b, k, "cpu")
            )
        torch_result = evaluate_file(path, recalls=(1, 5), block_rows=16, device=device, bootstrap=0)
        assert torch_result.recalls == faiss_result.recalls
        assert torch_result.search == "exact"


def _fail(*args, **kwargs):
    raise AssertionError("the other search path was used")


class TestFaissGpuIndex:
    def test_cpu_keeps_the_index(self):
        ivf = faiss.index_factory(4, "IVF2,Flat")
        assert index_module.on_device(ivf, "cpu", 2) == (ivf, "CPU")

    @pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
    def test_auto_without_a_gpu_is_silent(self):
        ivf = faiss.index_factory(4, "IVF2,Flat")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert index_module.on_device(ivf, "auto", 2) == (ivf, "CPU")

    def test_cuda_with_faiss_cpu_falls_back_with_a_note(self, monkeypatch):
        monkeypatch.setattr(search, "search_device", lambda d: torch.device("cuda", 0))
        monkeypatch.setattr(index_module, "faiss_has_gpu", lambda: False)
        ivf = faiss.index_factory(4, "IVF2,Flat")
        with pytest.warns(UserWarning, match="no GPU support .* runs on the CPU"):
            assert index_module.on_device(ivf, "cuda", 2) == (ivf, "CPU")

    def test_an_index_faiss_cannot_move_falls_back_with_a_note(self, monkeypatch):
        def refuse(*args):
            raise RuntimeError("Error: not implemented for this index type")

        monkeypatch.setattr(search, "search_device", lambda d: torch.device("cuda", 1))
        monkeypatch.setattr(index_module, "faiss_has_gpu", lambda: True)
        monkeypatch.setattr(faiss, "StandardGpuResources", lambda: object(), raising=False)
        monkeypatch.setattr(faiss, "index_cpu_to_gpu", refuse, raising=False)
        hnsw = faiss.index_factory(4, "HNSW8")
        with pytest.warns(UserWarning, match="cannot put this index on GPU 1 .*not implemented"):
            assert index_module.on_device(hnsw, "cuda:1", 2) == (hnsw, "CPU")

    @pytest.mark.skipif(not index_module.faiss_has_gpu(), reason="faiss has no GPU support here")
    def test_gpu_index_equals_cpu_index(self):
        rng = np.random.default_rng(0)
        db = rng.standard_normal((2000, 16)).astype(np.float32)
        ivf = faiss.index_factory(16, "IVF8,Flat")
        ivf.train(db)
        ivf.add(db)
        faiss.extract_index_ivf(ivf).nprobe = 8
        gpu, where = index_module.on_device(ivf, "cuda", 8)
        assert where == "GPU 0"
        np.testing.assert_array_equal(gpu.search(db[:50], 5)[1], ivf.search(db[:50], 5)[1])


def unit_blobs(n: int, d: int, centres: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d))
    x = c[rng.integers(0, centres, n)]
    x = x / np.linalg.norm(x, axis=1, keepdims=True) + noise * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def inertia(x, c) -> float:
    return float(((x[:, None].astype(np.float64) - c[None]) ** 2).sum(-1).min(1).sum())


class TestKmeans:
    @pytest.mark.parametrize("seed", [0, 7])
    def test_permutation_is_faiss_initialisation(self, seed):
        x = unit_blobs(500, 6, 4, 0.5, seed)
        km = faiss.Kmeans(6, 9, niter=0, seed=seed)
        km.train(x)
        np.testing.assert_array_equal(km.centroids, x[faiss_permutation(500, seed + 1)[:9]])

    @pytest.mark.parametrize(
        "n, k, niter, seed", [(3000, 12, 100, 0), (3000, 12, 7, 4), (5000, 16, 50, 1)]
    )  # 5000 > 16 x 256
    def test_same_seed_same_centroids(self, device, n, k, niter, seed):
        x = unit_blobs(n, 16, 30, 0.1, seed)
        want = faiss_kmeans(x, k, niter, seed)
        got = torch_kmeans(x, k, niter, seed, device)
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert inertia(x, got) == pytest.approx(inertia(x, want), rel=1e-5)

    def test_given_init_and_empty_clusters_split_as_faiss(self, device):
        x = unit_blobs(3000, 16, 6, 0.1, 0)
        init = x[:8].copy()
        init[[3, 5]] = init[2]  # duplicates: no point goes to them, they are split
        init[7] = init[1]
        km = faiss.Kmeans(16, 8, niter=5, seed=0)
        km.train(x, init_centroids=init)
        assert km.iteration_stats[0]["nsplit"] == 3  # the case is exercised
        got = torch_kmeans(x, 8, 5, 0, device, init=init)
        np.testing.assert_allclose(got, km.centroids, atol=1e-6)
        np.testing.assert_allclose(faiss_kmeans(x, 8, 5, 0, init=init), km.centroids)

    def test_without_iterations_gives_the_init(self, device):
        x = unit_blobs(300, 4, 3, 0.3, 2)
        np.testing.assert_array_equal(torch_kmeans(x, 5, 0, 2, device), faiss_kmeans(x, 5, 0, 2))

    def test_as_many_points_as_clusters(self, device):
        x = unit_blobs(5, 3, 2, 0.3, 0)
        np.testing.assert_array_equal(torch_kmeans(x, 5, 10, 0, device), x)
        np.testing.assert_array_equal(faiss_kmeans(x, 5, 10, 0), x)

    def test_too_few_points(self, device):
        with pytest.raises(ValueError, match="at least 4"):
            torch_kmeans(np.ones((3, 2), np.float32), 4, 10, 0, device)

    def test_dispatch(self, monkeypatch):
        import vprkit.search.kmeans as module

        monkeypatch.setattr(module, "torch_kmeans", _fail)
        x = unit_blobs(400, 4, 3, 0.3, 0)
        np.testing.assert_array_equal(kmeans(x, 3, 10, 0, "cpu"), faiss_kmeans(x, 3, 10, 0))
        if not torch.cuda.is_available():
            np.testing.assert_array_equal(kmeans(x, 3, 10, 0, "auto"), faiss_kmeans(x, 3, 10, 0))


class TestNetVLADInit:
    def test_torch_init_equals_faiss_init(self, device):
        feats = unit_blobs(6000, 16, 10, 0.1, 3)
        cpu = NetVLAD(clusters=8, dim=16)
        cpu.init_from_descriptors(feats, seed=3, niter=NETVLAD_KMEANS_ITERATIONS)
        other = NetVLAD(clusters=8, dim=16).to(device)
        torch_init_netvlad(other, feats, 3, torch.device(device))
        np.testing.assert_allclose(
            other.centroids.detach().cpu().numpy(), cpu.centroids.detach().numpy(), atol=1e-5
        )
        np.testing.assert_allclose(
            other.conv.weight.detach().cpu().numpy(), cpu.conv.weight.detach().numpy(), rtol=1e-4, atol=1e-4
        )
        assert other.centroids.device.type == device

    def test_too_few_features(self, device):
        with pytest.raises(VprkitError, match="at least 8 local features"):
            torch_init_netvlad(
                NetVLAD(clusters=8, dim=4), np.ones((5, 4), np.float32), 0, torch.device(device)
            )

    def test_extraction_records_one_method_and_the_device(self, netvlad_file):
        from vprkit.store import DescriptorFile

        with DescriptorFile(netvlad_file) as f:
            init = f.model["netvlad_init"]
        assert init["method"] == "faiss k-means" and init["kmeans_device"] == "cpu"
