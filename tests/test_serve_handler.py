"""The Hub Inference Endpoints handler, instantiated on an export the way the Endpoints toolkit does it:
``handler.py`` imported from the export folder, ``EndpointHandler(path)``, called with ``{"inputs", "parameters"}``."""

import base64
import importlib.util
import io
import sys

import numpy as np
import pytest
from PIL import Image

from animal_reid.serve.handler import write_handler
from animal_reid.testing.serve import photo, tiny_model


@pytest.fixture(scope="module")
def handler(tmp_path_factory):
    export = tiny_model(tmp_path_factory.mktemp("export") / "model")
    path = write_handler(export)
    assert path.name == "handler.py" and (export / "requirements.txt").read_text().startswith("timm")
    spec = importlib.util.spec_from_file_location("endpoint_handler_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # from the export alone, as the toolkit does
    assert "animal_reid" not in module.__dict__
    yield module.EndpointHandler(str(export))
    sys.modules.pop("endpoint_handler_under_test", None)


def test_handler_returns_embeddings_matching_encode(handler):
    b64 = [base64.b64encode(photo(s)).decode() for s in (1, 2)]
    out = handler({"inputs": b64, "parameters": {"boxes": [[0, 0, 40, 40], None]}})
    emb = np.array(out["embeddings"], np.float32)
    assert out["dim"] == 8 and emb.shape == (2, 8)
    ref = handler.model.encode(
        [photo(1), photo(2)], processor=handler.processor, boxes=[[0, 0, 40, 40], None]
    )
    assert np.allclose(emb, ref, atol=1e-5)
    one = handler({"inputs": Image.open(io.BytesIO(photo(2)))})  # the toolkit's decoded image/* body
    assert np.allclose(one["embeddings"][0], ref[1], atol=1e-5)
    dicts = handler({"inputs": [{"image": b64[0], "box": [0, 0, 40, 40]}]})
    assert np.allclose(dicts["embeddings"][0], ref[0], atol=1e-5)


@pytest.mark.parametrize(
    "request_, message",
    [({"nope": 1}, '"inputs"'), ({"inputs": []}, "empty"), ({"inputs": "%%%"}, "base64"),
     ({"inputs": [1]}, "got int"), ({"inputs": ["aGk="], "parameters": {"boxes": [None, None]}}, "2 boxes")],
)  # fmt: skip
def test_handler_rejects_bad_requests_with_one_line(handler, request_, message):
    with pytest.raises(ValueError, match=message):
        handler(request_)
