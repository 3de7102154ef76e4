"""``POST /v1/explain``: why two photos match, PAIR-X style (:func:`animal_reid.explain.explain_pair`).

Each side of the pair is an uploaded image (``image_a`` / ``image_b``) or a catalogue sighting (``sighting_a`` /
``sighting_b``; ``sighting_id`` is short for ``sighting_b``), whose stored photo, box and theta are used (a ``box_a`` /
``box_b`` sent replaces the sighting's box and theta, a ``theta_a`` / ``theta_b`` its theta). The answer is the picture
(:func:`animal_reid.explain.draw.draw_explanation`) as PNG (``format=png``), or JSON (``format=json``, the default):
:meth:`~animal_reid.explain.Explanation.to_dict` (matches in photo pixels, scores, cosine, stage, relevance method,
heat maps), the inputs as compared, and the picture as a ``data:image/png;base64`` URL. A read: no token needed.

Explanations run in a worker thread, outside the micro-batcher, on a private copy of the service's model (made at
the first request): LRP merges each BatchNorm into its convolution in place and hooks the modules while it runs,
which would change the embeddings the batcher computes meanwhile. A lock lets one explanation run at a time, and
grad mode is on (inference mode off) inside it whatever the thread had. No ``from __future__ import annotations``:
FastAPI reads the route's annotations.
"""

import base64
import copy
import io
import logging
import re
import threading
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from anyio import to_thread
from fastapi import FastAPI, File, Form, Query, UploadFile
from fastapi.responses import Response

from animal_reid.serve import api_models as m
from animal_reid.serve.service import Service
from animal_reid.serve.store import NotFound
from animal_reid.serve.uploads import fail, parse_box, read_upload

MAX_TOP = 100  # lines on the picture (and matches in the answer); the feature grid rarely has more
BOX_HELP = "[x, y, w, h] in the photo's pixels as displayed (replaces a sighting's box and theta)"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Side:
    """One photo of the pair: its bytes (an upload or a sighting's file), the name errors give, box and theta."""

    name: str
    data: bytes
    box: list[float] | None
    theta: float
    sighting_id: int | None = None

    def describe(self) -> dict:
        return {"name": self.name, "sighting_id": self.sighting_id, "box": self.box, "theta": self.theta}


class Explainer:
    """Explanations for ``service``: its model copied once (see the module's docstring), one at a time."""

    def __init__(self, service: Service):
        self.service = service
        self._lock = threading.Lock()  # held while the private model runs
        self._model: Any = None

    def _private_model(self) -> Any:
        """The copy of the service's model the explanations use (called under the lock)."""
        if self._model is None:
            self._model = copy.deepcopy(self.service.model).eval()
            logger.info("explanations: a copy of the model is kept for them")
        return self._model

    def explain(self, a: Side, b: Side, top: int) -> tuple[dict, bytes]:
        """``(Explanation.to_dict(), PNG bytes of the picture)`` for the pair; one-line 4xx for unusable input."""
        import torch

        from animal_reid.explain import explain_pair
        from animal_reid.explain.draw import draw_explanation
        from animal_reid.explain.features import current_processor

        processor = current_processor(self.service.processor)
        photos = [_load(processor, side) for side in (a, b)]
        boxes, thetas = (a.box, b.box), (a.theta, b.theta)
        with self._lock, torch.inference_mode(False), torch.enable_grad():
            model = self._private_model()
            try:
                found = explain_pair(model, processor, *photos, boxes=boxes, thetas=thetas, top=top)
            except (ImportError, RuntimeError) as err:
                if isinstance(err, ImportError) or isinstance(err.__cause__, ImportError):
                    raise fail(501, f"explanations are not available on this server: {_line(err)}") from err
                raise
        picture = draw_explanation(*photos, found, boxes=boxes, thetas=thetas, top=top)
        return found.to_dict(), _png(picture)


def _line(err: BaseException) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0][:300]


def _load(processor: Any, side: Side) -> Any:
    """The side's photo (RGB, EXIF orientation applied), its box checked as embedding checks it: 422 for a box
    that does not fit the photo, 400 for an image that cannot be used, each naming the side."""
    from modeling.boxes_animal_reid import InvalidBoxError

    try:
        photo = processor.load_image(side.data)
        processor.crop(photo, side.box, side.theta, name=side.name)
    except InvalidBoxError as err:
        raise fail(422, _line(err)) from err
    except (ValueError, OSError) as err:  # InvalidImageError is a ValueError; truncated files raise OSError
        reason = re.sub(r"^<\d+ bytes>: ", "", _line(err))
        raise fail(400, f"{side.name}: cannot use this image: {reason}") from err
    return photo


def _png(picture: Any) -> bytes:
    """PNG bytes of the drawing (a PIL image or an ``HxWx3`` uint8 array)."""
    from PIL import Image

    if not isinstance(picture, Image.Image):
        picture = Image.fromarray(picture)
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return buf.getvalue()


def _sighting_side(service: Service, sighting_id: int, box: list[float] | None, theta: float | None) -> Side:
    """The sighting's stored photo with its stored box and theta (a ``box`` given replaces both, a ``theta``
    given replaces the stored one); 404 naming the sighting."""
    found = service.catalogue.photo_files([sighting_id]).get(sighting_id)
    if found is None:
        raise NotFound(f"sighting {sighting_id} is not in the catalogue")
    path, stored_box, stored_theta = found
    name = f"sighting {sighting_id}"
    try:
        data = path.read_bytes()
    except OSError as err:
        raise fail(409, f"{name}: its photo file {path.name} is missing from the photo folder") from err
    if box is None:
        box, theta = stored_box, stored_theta if theta is None else theta
    return Side(name, data, box, float(theta or 0.0), sighting_id)


async def _side(
    service: Service, which: str, upload: UploadFile | None, sighting: int | None, box: str | None, theta
) -> Side:
    """Side ``which`` ("a" or "b") from its image or its sighting id: exactly one of them."""
    if (upload is None) == (sighting is None):
        given = "both" if upload is not None else "neither"
        raise fail(422, f"photo {which.upper()}: give image_{which} or sighting_{which}, not {given}")
    parsed = parse_box(box, f"box_{which}")
    if upload is None:
        return await to_thread.run_sync(_sighting_side, service, sighting, parsed, theta)
    photo = await read_upload(upload, service)
    return Side(upload.filename or f"image_{which}", photo.data, parsed, float(theta or 0.0))


def add_explain_routes(app: FastAPI, service: Service) -> Explainer:
    """Add ``POST /v1/explain`` for ``service`` to ``app``; returns its :class:`Explainer` (also
    ``app.state.explainer``)."""
    explainer = Explainer(service)
    app.state.explainer = explainer
    png = {"description": "format=png: the picture only", "content": {"image/png": {}}}

    @app.post("/v1/explain", response_model=m.ExplainAnswer, responses={200: png, 404: {}, 501: {}})
    async def explain(
        image_a: Annotated[UploadFile | None, File(description="photo A (or give sighting_a)")] = None,
        image_b: Annotated[UploadFile | None, File(description="photo B (or give sighting_b)")] = None,
        sighting_a: Annotated[int | None, Form(description="a catalogue sighting as photo A")] = None,
        sighting_b: Annotated[int | None, Form(description="a catalogue sighting as photo B")] = None,
        sighting_id: Annotated[int | None, Form(description="short for sighting_b")] = None,
        box_a: Annotated[str | None, Form(description=BOX_HELP)] = None,
        box_b: Annotated[str | None, Form(description=BOX_HELP)] = None,
        theta_a: Annotated[float | None, Form(description="radians")] = None,
        theta_b: Annotated[float | None, Form(description="radians")] = None,
        top: Annotated[int, Query(ge=1, le=MAX_TOP, description="correspondences drawn and listed")] = 10,
        fmt: Annotated[Literal["json", "png"], Query(alias="format")] = "json",
    ) -> Any:
        """Where two photos agree in the model's own features (PAIR-X): the strongest correspondences drawn as
        lines over the two photos with a relevance heat map, and the scores. Seconds per pair on a CPU."""
        if sighting_id is not None and sighting_b is not None:
            raise fail(422, "sighting_id is short for sighting_b: give one of them")
        a = await _side(service, "a", image_a, sighting_a, box_a, theta_a)
        b = await _side(
            service, "b", image_b, sighting_b if sighting_id is None else sighting_id, box_b, theta_b
        )
        found, picture = await to_thread.run_sync(explainer.explain, a, b, top)
        if fmt == "png":
            return Response(picture, media_type="image/png")
        image = "data:image/png;base64," + base64.b64encode(picture).decode("ascii")
        return {**found, "inputs": [a.describe(), b.describe()], "image": image}

    return explainer
