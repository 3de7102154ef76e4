"""encode()'s engines: onnxruntime on the CPU agrees with PyTorch, follows weight changes, falls back cleanly."""

from __future__ import annotations

import contextlib
import io
import logging
import threading

import numpy as np
import pytest
import torch
from PIL import Image

import modeling.encoding_animal_reid as enc
from modeling import AnimalReIDConfig, AnimalReIDModel, InvalidImageError

pytest.importorskip("onnxruntime")


def _images(n: int = 5) -> list[Image.Image]:
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 256, (70 + 7 * i, 90, 3), dtype=np.uint8)) for i in range(n)]


@pytest.fixture()
def model():
    torch.manual_seed(0)
    cfg = AnimalReIDConfig(backbone="test_efficientnet", embedding_dim=32, image_size=64)
    m = AnimalReIDModel(cfg).eval()
    # non-trivial BatchNorm statistics and GeM p, so folding them in the exported graph is exercised
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
        m.pooling.p.fill_(2.5)
    return m


def _truncated_jpeg(tmp_path, image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="JPEG")
    path = tmp_path / "truncated.jpg"
    path.write_bytes(buf.getvalue()[:200])
    return str(path)


def _sessions(model) -> dict:
    """The cached onnxruntime sessions of ``model``, by intra-op thread count."""
    return enc._ONNX_ENGINES[model][1]


def test_onnxruntime_matches_torch_and_is_the_cpu_default(model):
    imgs = _images()
    ref = model.encode(imgs, batch_size=2, engine="torch")
    assert model not in enc._ONNX_ENGINES
    got = model.encode(imgs, batch_size=2, engine="onnxruntime", streams=1)
    assert got.shape == ref.shape == (5, 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    engine = _sessions(model)[torch.get_num_threads()]
    # auto (the default) on the CPU in fp32 reuses the cached export: no second export
    auto = model.encode(imgs, batch_size=3, streams=1)
    assert _sessions(model)[torch.get_num_threads()] is engine
    np.testing.assert_allclose(auto, ref, atol=1e-5)
    # pipeline-style single images and a batch size that leaves a remainder use the dynamic batch axis
    np.testing.assert_allclose(model.encode(imgs[:1], engine="onnxruntime"), ref[:1], atol=1e-5)


def test_streams_keep_order_share_one_export_and_raise_at_the_bad_image(model, monkeypatch, tmp_path, request):
    imgs = _images(7)
    ref = model.encode(imgs, batch_size=2, engine="torch")
    exports = []
    real_export = enc.export_onnx_graph
    monkeypatch.setattr(enc, "export_onnx_graph", lambda *a, **k: exports.append(1) or real_export(*a, **k))
    real_threads = torch.get_num_threads()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)  # as on a 4-core machine
    # encode puts back the thread count it read, here the patched 4: the real one is put back after the test
    request.addfinalizer(lambda: torch.set_num_threads(real_threads))
    # default: one stream per core, each with a single-threaded session; 4 batches of 2 (the last of 1)
    got = model.encode(imgs, batch_size=2)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert set(_sessions(model)) == {1}
    # 2 streams of 2 threads; a call with one batch runs it with all 4 threads: new sessions, same export
    np.testing.assert_allclose(model.encode(imgs, batch_size=1, streams=2), ref, atol=1e-5)
    np.testing.assert_allclose(model.encode(imgs[:2], batch_size=4), ref[:2], atol=1e-5)
    assert set(_sessions(model)) == {1, 2, 4} and len(exports) == 1
    assert all(e.session.get_session_options().intra_op_num_threads == t for t, e in _sessions(model).items())
    bad = _truncated_jpeg(tmp_path, imgs[0])
    for streams in (1, 3):
        with pytest.raises(InvalidImageError, match="truncated.jpg"):
            model.encode([*imgs[:5], bad, imgs[6]], batch_size=2, streams=streams)
    with pytest.raises(ValueError, match="streams must be >= 1"):
        model.encode(imgs, streams=0)


def test_threads_caps_what_one_call_uses(model):
    """``threads``: a server's batching worker gets its share of the cores, whatever torch's count is."""
    imgs = _images(4)
    ref = model.encode(imgs, batch_size=2, engine="torch")
    got = model.encode(imgs, batch_size=2, engine="onnxruntime", streams=1, threads=1)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert 1 in _sessions(model)
    assert _sessions(model)[1].session.get_session_options().intra_op_num_threads == 1
    with pytest.raises(ValueError, match="threads must be >= 1"):
        model.encode(imgs, threads=0)


@contextlib.contextmanager
def _loads_seen(threads: int):
    """Torch set to ``threads`` threads; yields the (thread name, torch threads) of every batch loaded, and puts
    torch's setting back afterwards."""
    seen, saved, real_load = [], torch.get_num_threads(), enc.ThreadPrefetch._load

    def spy(self, start):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return real_load(self, start)

    torch.set_num_threads(threads)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(enc.ThreadPrefetch, "_load", spy)
            yield seen
    finally:
        torch.set_num_threads(saved)


def test_streams_limit_torch_threads_inside_and_leave_the_setting_as_it_was(model):
    with _loads_seen(2) as seen:
        model.encode(_images(4), batch_size=1)  # 2 streams of one torch thread each
        assert {n for n, t in seen if n.startswith("encode-decode")} and all(t == 1 for _, t in seen)
        assert torch.get_num_threads() == 2
        # threads started afterwards get the caller's setting back, not the streams' one
        later = []
        t = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        t.start()
        t.join()
        assert later == [2]


def test_a_single_batch_on_one_thread_runs_inline_with_its_thread_count_restored(model):
    pytest.importorskip("onnxruntime")
    with _loads_seen(2) as seen:
        got = model.encode(_images(3), batch_size=4, streams=1, threads=1, engine="onnxruntime")
        assert seen == [(threading.current_thread().name, 1)]  # no pool thread: the caller's own
        assert torch.get_num_threads() == 2
    ref = model.encode(_images(3), batch_size=1, engine="torch")
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_one_stream_runs_every_batch_inline_in_order(model):
    """One stream of several batches (a service micro-batch over encode's batch size) starts no pool thread:
    the caller would only wait for it."""
    pytest.importorskip("onnxruntime")
    imgs = _images(5)
    with _loads_seen(2) as seen:
        got = model.encode(imgs, batch_size=2, streams=1, threads=1, engine="onnxruntime")
        assert seen == [(threading.current_thread().name, 1)] * 3  # three batches, all on the caller's thread
        assert torch.get_num_threads() == 2
    np.testing.assert_allclose(got, model.encode(imgs, batch_size=1, engine="torch"), atol=1e-5)


def test_export_follows_weight_changes(model):
    imgs = _images(2)
    before = model.encode(imgs, engine="onnxruntime")
    first = enc._ONNX_ENGINES[model]
    with torch.no_grad():
        model.neck_bn.bias.add_(0.5)  # in place, as an optimiser step would
    after = model.encode(imgs, engine="onnxruntime")
    assert enc._ONNX_ENGINES[model] is not first
    assert not np.allclose(before, after, atol=1e-3)
    np.testing.assert_allclose(after, model.encode(imgs, engine="torch"), atol=1e-5)


def test_engine_arguments_are_checked(model):
    with pytest.raises(ValueError, match="engine must be"):
        model.encode(_images(1), engine="tensorrt")
    with pytest.raises(ValueError, match="float32 models on the CPU only"):
        model.encode(_images(1), engine="onnxruntime", precision="bf16")
    # bf16 with auto silently uses torch (onnxruntime is fp32 only)
    out = model.encode(_images(1), precision="bf16")
    assert out.shape == (1, 32) and model not in enc._ONNX_ENGINES


def test_auto_falls_back_to_torch_when_export_fails(model, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(enc, "OnnxRuntimeEngine", broken)
    imgs = _images(3)
    with caplog.at_level(logging.WARNING, logger=enc.__name__):
        got = model.encode(imgs, batch_size=2)
    assert "exporter exploded" in caplog.text and "encoding with torch" in caplog.text
    np.testing.assert_allclose(got, model.encode(imgs, batch_size=2, engine="torch"), atol=1e-6)
    with pytest.raises(RuntimeError, match="could not export the model to onnxruntime"):
        model.encode(imgs, engine="onnxruntime")


def test_without_onnxruntime_auto_uses_torch(model, monkeypatch):
    monkeypatch.setattr(enc, "onnxruntime_available", lambda: False)
    got = model.encode(_images(2))
    assert model not in enc._ONNX_ENGINES
    np.testing.assert_allclose(got, model.encode(_images(2), engine="torch"), atol=1e-6)
    with pytest.raises(ImportError, match="pip install onnxruntime"):
        model.encode(_images(1), engine="onnxruntime")


def test_thread_prefetch_keeps_order_and_raises_at_the_bad_image(model, tmp_path):
    imgs = _images(7)
    ref = np.concatenate([model.encode([im], engine="torch") for im in imgs])
    got = model.encode(imgs, batch_size=2, engine="torch")  # on the CPU: a decoding thread, 4 batches
    np.testing.assert_allclose(got, ref, atol=1e-5)
    # several threads decode batches concurrently; rows stay in input order
    got3 = model.encode(imgs, batch_size=1, engine="torch", decode_threads=3)
    np.testing.assert_allclose(got3, ref, atol=1e-5)
    bad = _truncated_jpeg(tmp_path, imgs[0])
    for threads in (1, 3):
        with pytest.raises(InvalidImageError, match="truncated.jpg"):
            model.encode([*imgs[:5], bad, imgs[6]], batch_size=2, engine="torch", decode_threads=threads)


def test_torch_resize_backend_is_within_two_grey_levels_of_pil():
    from modeling import AnimalReIDImageProcessor

    rng = np.random.default_rng(0)
    fast = AnimalReIDImageProcessor(size={"height": 56, "width": 72})
    slow = AnimalReIDImageProcessor(size={"height": 56, "width": 72}, resize_backend="pil")
    assert fast.resize_backend == "torch" and fast.to_dict()["resize_backend"] == "torch"
    worst, differing = 0, []
    for h, w in [(300, 217), (57, 71), (40, 33), (56, 72), (1000, 90)]:  # down, about equal, up, same, mixed
        # smooth content with edges, like a photo
        base = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
        im = Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC)
        a = fast.resize_uint8(im).int()
        b = slow.resize_uint8(im).int()
        assert a.shape == b.shape == (3, 56, 72) and fast.resize_uint8(im).dtype == torch.uint8
        diff = (a - b).abs()
        worst = max(worst, int(diff.max()))
        differing.append(float((diff > 0).float().mean()))
    assert worst <= 2 and max(differing) < 0.25  # rounding: measured max 1, on 0-18% of pixels
    with pytest.raises(ValueError, match="resize_backend"):
        AnimalReIDImageProcessor(resize_backend="cv2")


@pytest.mark.parametrize(
    "kw",
    [
        dict(
            backbone="swin_tiny_patch4_window7_224",
            backbone_kwargs={"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]},
            pooling="gem",
            image_size=224,
            embedding_dim=32,
        ),
        dict(
            backbone="vit_tiny_patch16_224",
            backbone_kwargs={"img_size": 64, "depth": 2},
            pooling="backbone",
            image_size=64,
            embedding_dim=32,
        ),
    ],
    ids=["swin", "vit"],
)
def test_onnxruntime_engine_handles_transformer_backbones(kw):
    # MegaDescriptor (Swin) conversions and ViTs: window partitions and token reshapes keep a dynamic batch
    torch.manual_seed(0)
    m = AnimalReIDModel(AnimalReIDConfig(**kw)).eval()
    imgs = _images(4)
    ref = m.encode(imgs, engine="torch", batch_size=4)
    for bs in (1, 3):
        np.testing.assert_allclose(m.encode(imgs, engine="onnxruntime", batch_size=bs), ref, atol=1e-5)


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_encode_in_training_mode_embeds_in_eval_mode_and_leaves_the_mode_alone(model, engine):
    """BatchNorm uses its running statistics either way; the onnxruntime path, exported in eval mode, does not
    switch modes at all (no walk over every module per call)."""
    if engine == "onnxruntime":
        pytest.importorskip("onnxruntime")
    imgs = _images(3)
    ref = model.eval().encode(imgs, engine="torch")
    model.train()
    try:
        got = model.encode(imgs, engine=engine)
        assert model.training and all(m.training for m in model.modules())
    finally:
        model.eval()
    np.testing.assert_allclose(got, ref, atol=1e-5)
