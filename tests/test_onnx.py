"""ONNX export: onnxruntime on the CPU must match PyTorch (max abs diff <= 1e-4, cosine >= 0.9999)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from animal_reid.onnx_export import compare_with_pytorch, export_onnx, main, onnx_embed, onnx_session
from modeling import AnimalReIDConfig, AnimalReIDImageProcessor, AnimalReIDModel

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")


def _model(**kwargs) -> AnimalReIDModel:
    torch.manual_seed(0)
    model = AnimalReIDModel(AnimalReIDConfig(**kwargs)).eval()
    with torch.no_grad():  # non-trivial neck statistics and GeM exponent
        if model.neck_bn is not None:
            model.neck_bn.running_mean.normal_(0, 0.1)
            model.neck_bn.running_var.uniform_(0.5, 1.5)
        if model.pooling is not None:
            model.pooling.p.fill_(2.5)
    return model


def test_gem_projection_neck_exports_with_dynamic_batch(tmp_path):
    model = _model(backbone="test_efficientnet", image_size=64, embedding_dim=32)
    out = tmp_path / "m.onnx"
    check = export_onnx(model, out)
    assert check is not None and check.ok() and check.batch_size == 3
    session = onnx_session(out)
    for batch in (1, 5):  # exported at batch 2
        x = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch))
        got = onnx_embed(session, x)
        with torch.no_grad():
            ref = model(pixel_values=x).embeddings.numpy()
        assert got.shape == (batch, 32)
        assert np.abs(got - ref).max() <= 1e-4
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    prep = json.loads(meta["preprocessing"])
    assert prep["size"] == {"height": 64, "width": 64} and meta["embedding_dim"] == "32"
    assert json.loads(out.with_suffix(".preprocessor.json").read_text()) == prep


def test_swin_with_backbone_pooling_exports(tmp_path):
    model = _model(
        backbone="swin_tiny_patch4_window7_224",
        backbone_kwargs={"embed_dim": 16, "depths": [2, 2, 2, 2], "num_heads": [1, 1, 2, 2]},
        pooling="backbone",
        embedding_dim=0,
        neck_bn=False,
    )
    check = export_onnx(model, tmp_path / "swin.onnx")
    assert check.ok() and check.max_abs_diff <= 1e-4


def test_cli_on_saved_folder_keeps_the_saved_preprocessing(tmp_path, capsys):
    model = _model(backbone="test_efficientnet", image_size=[48, 64], embedding_dim=16)
    model.save_pretrained(tmp_path / "fe")
    AnimalReIDImageProcessor(size={"height": 48, "width": 64}, resample="bilinear_noaa").save_pretrained(
        tmp_path / "fe"
    )
    result = main([str(tmp_path / "fe"), str(tmp_path / "fe.onnx")])
    assert result.ok()
    assert "min cosine" in capsys.readouterr().out
    prep = json.loads((tmp_path / "fe.preprocessor.json").read_text())
    assert prep["resample"] == "bilinear_noaa" and prep["size"] == {"height": 48, "width": 64}


def _real_photos(root: Path, n: int = 16) -> list[Path]:
    folders = [
        "wildlife_reidentification-main/Nyala_Data_Zero",
        "wildlife_reidentification-main/Lion_Data_Zero",
        "Cattle-ID-main/datasets_v2",
        "DogFaceNet/after_4_bis",
        "MacaqueFaces/MacaqueFaces",
        "FaroPigReID-33/Galleries",
    ]
    out = []
    for folder in folders:
        files = sorted(p for p in (root / folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        files = [p for p in files if "Masks" not in p.parts]
        out += files[:: max(1, len(files) // 3)][:3]
    return out[:n]


@pytest.mark.realdata
def test_real_photos_match_pytorch(tmp_path, data_root):
    from animal_reid.weights import load_imagenet_backbone

    model = _model(backbone="efficientnet_lite0", image_size=224, embedding_dim=512)
    load_imagenet_backbone(model)
    paths = _real_photos(data_root)
    assert len(paths) >= 12, paths
    processor = AnimalReIDImageProcessor(size={"height": 224, "width": 224})
    pixels = processor([str(p) for p in paths])["pixel_values"]
    export_onnx(model, tmp_path / "lite0.onnx", check=False)
    check = compare_with_pytorch(model, tmp_path / "lite0.onnx", pixels)
    assert check.batch_size == len(paths)
    assert check.max_abs_diff <= 1e-4 and check.min_cosine >= 0.9999, check


def test_test_time_flip_is_part_of_the_exported_graph(tmp_path):
    model = _model(backbone="test_efficientnet", image_size=64, embedding_dim=16, test_time_flip=True)
    check = export_onnx(model, tmp_path / "flip.onnx")
    assert check.ok()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    got = onnx_embed(onnx_session(tmp_path / "flip.onnx"), x)
    mirrored = onnx_embed(onnx_session(tmp_path / "flip.onnx"), torch.flip(x, dims=[-1]))
    assert np.abs(got - mirrored).max() <= 1e-4  # a mirror image embeds the same
    # the encode engine's cached export follows the flag: a left-right asymmetric image embeds differently
    img = np.zeros((64, 64, 3), np.uint8)
    img[:, :20] = 230
    img[8:30, 40:60, 1] = 180
    # (this small random network is nearly mirror-symmetric: the two differ by ~1e-3, onnxruntime and torch by ~1e-6)
    with_flip = model.encode([img], engine="onnxruntime")
    assert np.abs(with_flip - model.encode([img], engine="torch")).max() <= 2e-5
    model.config.test_time_flip = False
    without = model.encode([img], engine="onnxruntime")
    assert np.abs(without - model.encode([img], engine="torch")).max() <= 2e-5
    assert np.abs(with_flip - without).max() > 2e-4
