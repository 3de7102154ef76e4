"""Exports written before the restructuring of issue 30 still load and embed identically.

``fixtures/legacy_export/`` holds the weights and configs written by the code at commit 16c14d2
(``fixtures/make_legacy_export.py``), with the embeddings that code gave for generated images. Today's classes, and the
export completed with today's remote code (what ``AutoModel`` and ``identify`` load), must reproduce them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
LEGACY = FIXTURES / "legacy_export"


def _images(tmp_path: Path) -> list[str]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_legacy_export", FIXTURES / "make_legacy_export.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [str(p) for p in module.generated_images(tmp_path)]


def _with_remote_code(tmp_path: Path) -> Path:
    """The legacy export with today's remote code beside it, as ``save_pretrained`` writes it now."""
    import shutil

    from modeling import AnimalReIDModel

    out = tmp_path / "export"
    shutil.copytree(LEGACY, out)
    model = AnimalReIDModel.from_pretrained(LEGACY)
    model.save_pretrained(tmp_path / "today")  # copies every modeling file the classes import
    for f in (tmp_path / "today").glob("*.py"):
        shutil.copy2(f, out / f.name)
    return out


def _expected() -> np.ndarray:
    return np.asarray(json.loads((FIXTURES / "legacy_export_embeddings.json").read_text())["embeddings"])


def test_legacy_export_embeds_identically_with_todays_classes(tmp_path):
    from modeling import AnimalReIDModel

    model = AnimalReIDModel.from_pretrained(LEGACY).eval()
    emb = model.encode(_images(tmp_path), batch_size=4, engine="torch")
    np.testing.assert_allclose(emb, _expected(), atol=2e-6)


def test_legacy_export_embeds_identically_through_automodel_and_onnx(tmp_path):
    from transformers import AutoModel

    pytest.importorskip("onnxruntime")
    model = AutoModel.from_pretrained(_with_remote_code(tmp_path), trust_remote_code=True).eval()
    images = _images(tmp_path)
    np.testing.assert_allclose(model.encode(images, batch_size=4, engine="torch"), _expected(), atol=2e-6)
    np.testing.assert_allclose(
        model.encode(images, batch_size=4, engine="onnxruntime"), _expected(), atol=1e-4
    )


def test_legacy_export_serves_identify(tmp_path):
    """The library's loader (identify, search, serve) reads the legacy export and embeds as the model does."""
    from animal_reid.identify import Identifier, read_queries

    ident = Identifier.from_pretrained(
        str(_with_remote_code(tmp_path)), cache_dir=tmp_path / "cache", device="cpu"
    )
    items = read_queries(_images(tmp_path))
    names = [Path(i.image).name for i in items]
    emb = ident.embed(items)
    order = [names.index(f"image_{k}.png") for k in range(len(names))]
    np.testing.assert_allclose(emb[order], _expected(), atol=1e-4)


@pytest.mark.realdata
def test_trained_real6_export_written_before_the_refactor_loads(data_root, tmp_path):
    from transformers import AutoModel

    from modeling import AnimalReIDModel

    export = data_root.parent / "models" / "real6-lite0-224"
    if not (export / "model.safetensors").is_file():
        pytest.skip(f"no trained export at {export}")
    images = _images(tmp_path)[:3]
    ours = AnimalReIDModel.from_pretrained(export).eval().encode(images, engine="torch")
    remote = AutoModel.from_pretrained(export, trust_remote_code=True).eval().encode(images, engine="torch")
    assert ours.shape == (3, remote.shape[1]) and np.isfinite(ours).all()
    np.testing.assert_allclose(ours, remote, atol=2e-6)
