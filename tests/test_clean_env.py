"""An export loads and embeds in an environment holding only what the model card asks for (issue 13).

transformers' ``check_imports`` refuses a remote-code file that imports a missing package anywhere outside a
``try`` block, function bodies included; the dev install has every optional package, so only an environment
without them shows it. The child Python below runs with ``-S`` (no site-packages, no ``.pth`` files, so not
this repository either) and a folder of links to every installed package except the optional ones
(onnxruntime, onnx, faiss, scikit-learn, OpenCV, datasets, accelerate, evaluate), from a directory outside the
repository: what a Hub user with torch, timm and transformers has.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

OPTIONAL = ("onnxruntime", "onnx", "faiss", "sklearn", "scikit_learn", "cv2", "opencv", "datasets", "accelerate")
OPTIONAL += ("evaluate", "pyarrow")


def _is_optional(name: str) -> bool:
    base = name.split("-")[0].split(".")[0].lower()
    return any(base == o or base.startswith(o + "_") for o in OPTIONAL)


def _clean_site(dst: Path) -> Path:
    site = Path(sysconfig.get_paths()["purelib"])
    dst.mkdir()
    for entry in site.iterdir():
        if entry.suffix == ".pth" or _is_optional(entry.name) or entry.name.startswith("__editable__"):
            continue
        if entry.name.startswith(("animal_reid", "modeling", "data_scripts", "train_accelerate")):
            continue
        (dst / entry.name).symlink_to(entry)
    return dst


CHILD = r"""
import importlib.util, sys
import numpy as np
from PIL import Image
for name in ("onnxruntime", "onnx", "datasets", "accelerate", "modeling", "animal_reid"):
    assert importlib.util.find_spec(name) is None, f"{name} is importable in the clean environment"
from transformers import AutoImageProcessor, AutoModel, pipeline
export = sys.argv[1]
model = AutoModel.from_pretrained(export, trust_remote_code=True).eval()
processor = AutoImageProcessor.from_pretrained(export, trust_remote_code=True)
img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8))
img.save("a.png")
emb = model.encode(["a.png", img])                       # engine "auto" falls back to torch without onnxruntime
direct = model(**processor([img], return_tensors="pt")).embeddings.detach().numpy()
extractor = pipeline("image-feature-extraction", model=export, trust_remote_code=True)
vec = np.asarray(extractor("a.png", return_tensors=True)).reshape(-1)
np.save("out.npy", np.stack([emb[1], direct[0], vec]))
print("ok", emb.shape)
"""


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    from modeling import AnimalReIDConfig, AnimalReIDImageProcessor, AnimalReIDModel

    out = tmp_path_factory.mktemp("clean") / "export"
    model = AnimalReIDModel(AnimalReIDConfig(backbone="test_efficientnet", image_size=32, embedding_dim=8)).eval()
    model.save_pretrained(out)
    AnimalReIDImageProcessor.from_model_config(model.config).save_pretrained(out)
    return out


def test_save_pretrained_writes_every_modeling_file(tmp_path):
    """The model's own save_pretrained copies every file its remote code imports, relative imports followed."""
    from modeling import AnimalReIDConfig, AnimalReIDModel

    AnimalReIDModel(
        AnimalReIDConfig(backbone="test_efficientnet", image_size=32, embedding_dim=8)
    ).save_pretrained(tmp_path)
    written = {p.name for p in tmp_path.glob("*.py")}
    assert written == {
        p.name for p in (Path(__file__).resolve().parents[1] / "modeling").glob("*_animal_reid.py")
    }
    assert {"encoding_animal_reid.py", "pipeline_animal_reid.py"} <= written


def test_export_loads_and_embeds_without_optional_packages(export, tmp_path):
    assert {"encoding_animal_reid.py", "pipeline_animal_reid.py"} <= {p.name for p in export.iterdir()}
    site = _clean_site(tmp_path / "site")
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env |= {"PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    proc = subprocess.run(
        [sys.executable, "-S", "-c", CHILD, str(export)], cwd=work, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ok (2, 8)" in proc.stdout
    encoded, direct, piped = np.load(work / "out.npy")
    np.testing.assert_allclose(encoded, direct, atol=1e-5)
    np.testing.assert_allclose(piped, direct, atol=1e-5)
