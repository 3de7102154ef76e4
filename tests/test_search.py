"""GalleryIndex: exact chunked search against numpy, faiss indexes' recall, save/load round trips."""

import numpy as np
import pytest
import torch

from animal_reid.search import GalleryIndex, faiss_available

needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss not installed")


def _clustered_pair(rng, n_gallery, n_queries, dim=32, n_clusters=50, noise=0.3):
    """Gallery and queries drawn around the same cluster centres."""
    centers = rng.normal(size=(n_clusters, dim))
    out = []
    for n in (n_gallery, n_queries):
        x = centers[rng.integers(0, n_clusters, size=n)] + noise * rng.normal(size=(n, dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out.append(x.astype(np.float32))
    return out


def _exact(q, g, k):
    s = q @ g.T
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, idx, 1), idx


def test_exact_matches_numpy_across_chunks():
    rng = np.random.default_rng(0)
    g, q = _clustered_pair(rng, 3000, 37)
    # a tiny memory budget forces many gallery chunks; two adds give two stored chunks
    index = GalleryIndex(32, method="exact", memory_budget_bytes=64 * 1024)
    index.add(g[:1234])
    index.add(g[1234:])
    assert len(index) == 3000
    s, i = index.search(q, 10)
    ref_s, ref_i = _exact(q, g, 10)
    np.testing.assert_array_equal(i, ref_i)
    np.testing.assert_allclose(s, ref_s, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))],
)
def test_exact_on_a_device_matches_numpy(device):
    rng = np.random.default_rng(5)
    g, q = _clustered_pair(rng, 1500, 20)
    index = GalleryIndex.build(g, method="exact", device=device, memory_budget_bytes=256 * 1024)
    s, i = index.search(q, 5)
    ref_s, ref_i = _exact(q, g, 5)
    np.testing.assert_array_equal(i, ref_i)
    np.testing.assert_allclose(s, ref_s, rtol=1e-4, atol=1e-5)


def test_exact_float16_storage_keeps_rankings():
    rng = np.random.default_rng(1)
    g, q = _clustered_pair(rng, 2000, 50)
    index = GalleryIndex.build(g, method="exact", dtype="float16")
    s, i = index.search(q, 10)
    ref_s, ref_i = _exact(q, g, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i, ref_i, strict=True)]) > 0.97
    np.testing.assert_allclose(s, ref_s, atol=2e-3)


def test_unnormalised_rows_are_normalised_and_k_beyond_gallery_is_padded():
    g = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]], dtype=np.float32)
    index = GalleryIndex.build(g, method="exact")
    s, i = index.search(np.array([[5.0, 0.0]]), 5)
    np.testing.assert_array_equal(i[0], [0, 2, 1, -1, -1])
    np.testing.assert_allclose(s[0, :3], [1.0, np.sqrt(0.5), 0.0], atol=1e-6)
    assert np.all(np.isneginf(s[0, 3:]))
    assert g[0, 0] == 2.0  # the caller's array is untouched


def test_copy_false_aliases_unit_rows():
    g = np.eye(4, dtype=np.float32)
    index = GalleryIndex.build(g, method="exact", copy=False)
    g[0] = [0, 1, 0, 0]
    assert index.search(np.array([[0, 1.0, 0, 0]]), 2)[1][0].tolist() == [0, 1]


def test_ties_are_broken_by_gallery_order():
    g = np.array([[1.0, 0.0]] * 4 + [[0.0, 1.0]], dtype=np.float32)
    index = GalleryIndex(2, method="exact", memory_budget_bytes=64)
    index.add(g)
    _, i = index.search(np.array([[1.0, 0.0]]), 4)
    assert i[0].tolist() == [0, 1, 2, 3]


def test_small_cpu_searches_take_the_numpy_path_and_agree_with_the_chunked_one(monkeypatch):
    rng = np.random.default_rng(3)
    g, q = _clustered_pair(rng, 600, 4)
    g[7] = g[3]  # an exact tie: broken by gallery order on both paths
    q[0] = g[3]
    small = GalleryIndex.build(g, method="exact")
    calls = []
    monkeypatch.setattr(GalleryIndex, "_search_exact_impl", lambda *a: calls.append(a) or (None, None))
    s, i = small.search(q, 700)  # k beyond the gallery: padded as on the torch path
    assert not calls  # numpy only
    monkeypatch.undo()
    chunked = GalleryIndex(g.shape[1], method="exact", memory_budget_bytes=4096)  # forces the torch path
    chunked.add(g)
    ref_s, ref_i = chunked.search(q, 700)
    np.testing.assert_array_equal(i, ref_i)
    np.testing.assert_allclose(s[:, :600], ref_s[:, :600], rtol=1e-5, atol=1e-6)
    assert np.all(np.isneginf(s[:, 600:])) and np.all(i[:, 600:] == -1)
    assert i[0, :2].tolist() == [3, 7]


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="method must be one of"):
        GalleryIndex(8, method="annoy")
    index = GalleryIndex(8)
    with pytest.raises(ValueError, match="width 4, expected 8"):
        index.add(np.ones((3, 4)))
    with pytest.raises(ValueError, match="all zeros"):
        index.add(np.zeros((2, 8)))
    with pytest.raises(ValueError, match="k must be >= 1"):
        index.search(np.ones((1, 8)), 0)


def test_empty_index_returns_padding():
    s, i = GalleryIndex(4).search(np.ones((2, 4)), 3)
    assert i.shape == (2, 3) and np.all(i == -1) and np.all(np.isneginf(s))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_exact_save_load_round_trip(tmp_path, dtype):
    rng = np.random.default_rng(2)
    g, q = _clustered_pair(rng, 500, 5)
    index = GalleryIndex.build(g, method="exact", dtype=dtype)
    before = index.search(q, 7)
    index.save(tmp_path / "idx")
    for mmap in (False, True):
        loaded = GalleryIndex.load(tmp_path / "idx", mmap=mmap)
        assert loaded.dtype == dtype and len(loaded) == 500
        after = loaded.search(q, 7)
        np.testing.assert_array_equal(before[1], after[1])
        np.testing.assert_allclose(before[0], after[0])


def test_load_rejects_a_non_index_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved GalleryIndex"):
        GalleryIndex.load(tmp_path)


@needs_faiss
@pytest.mark.parametrize("method,dtype", [("ivf", "float32"), ("ivf", "float16"), ("hnsw", "float32")])
def test_faiss_indexes_recall_and_round_trip(tmp_path, method, dtype):
    rng = np.random.default_rng(3)
    g, q = _clustered_pair(rng, 8000, 100, n_clusters=200)
    index = GalleryIndex.build(g, method=method, dtype=dtype, nprobe=8)
    assert len(index) == 8000
    s, i = index.search(q, 10)
    _, ref_i = _exact(q, g, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i, ref_i, strict=True)])
    assert recall >= 0.9, recall
    # returned scores are the true cosines of the returned rows
    np.testing.assert_allclose(s, np.einsum("qd,qkd->qk", q, g[i]), atol=2e-3)
    index.save(tmp_path / method)
    loaded = GalleryIndex.load(tmp_path / method)
    assert loaded.method == method and len(loaded) == 8000
    np.testing.assert_array_equal(loaded.search(q, 10)[1], i)


@needs_faiss
def test_more_probes_never_lower_recall():
    rng = np.random.default_rng(4)
    g, q = _clustered_pair(rng, 6000, 100, n_clusters=300, noise=0.6)
    _, ref_i = _exact(q, g, 10)
    index = GalleryIndex.build(g, method="ivf", nlist=64, nprobe=1)
    recalls = []
    for nprobe in (1, 4, 64):
        index.nprobe = nprobe
        i = index.search(q, 10)[1]
        recalls.append(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i, ref_i, strict=True)]))
    assert recalls[0] <= recalls[1] <= recalls[2]
    assert recalls[2] == pytest.approx(1.0)  # all cells probed: exact


def test_auto_picks_exact_for_small_galleries():
    index = GalleryIndex.build(np.eye(3, dtype=np.float32), method="auto")
    assert index.method == "exact"
