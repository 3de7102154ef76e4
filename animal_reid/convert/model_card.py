"""Model cards for converted checkpoints: what the model is, where it came from, its licence, how to use it."""

from __future__ import annotations

import datetime as dt
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

SOURCES: dict[str, dict[str, Any]] = {
    "miewid": {
        "title": "MiewID",
        "what": (
            "MiewID, a multispecies animal re-identification model by Conservation X Labs and Wild Me "
            "(Otarashvili et al. 2024): an EfficientNetV2 (`efficientnetv2_rw_m`) backbone, GeM pooling with a "
            "learned exponent and a BatchNorm1d neck, trained with sub-center ArcFace and dynamic margins on a "
            "large community-curated multispecies dataset from the Wildbook platforms."
        ),
        # The Hub pages of conservationxlabs/miewid-msv2 and -msv3 declare no licence in their metadata.
        "license": "unknown",
        "license_text": (
            "The source weights' Hub metadata declares no licence. See the source model card and ask its "
            "authors before any use beyond research; this conversion changes the format only and grants "
            "no rights of its own."
        ),
        "citation": (
            "Otarashvili, L., Subramanian, T., Holmberg, J., Levenson, J. J., Stewart, C. V. "
            '"Multispecies Animal Re-ID Using a Large Community-Curated Dataset", 2024.'
        ),
        "tags": ["miewid"],
        "output_note": (
            "`outputs.features` is MiewID's own output (the BatchNorm1d output, not normalised); "
            "`outputs.embeddings` (and what the pipeline returns) is the same vector L2-normalised, so cosine "
            "similarities and rankings are MiewID's."
        ),
        "preprocessing_note": (
            "MiewID's evaluation code resizes with OpenCV `INTER_LINEAR` (bilinear, no antialiasing); "
            '`resample="bilinear_noaa"` reproduces it within one grey level. The torchvision `Resize` in the '
            "source card antialiases and differs enough to reorder close matches."
        ),
    },
    "megadescriptor": {
        "title": "MegaDescriptor",
        "what": (
            "MegaDescriptor (Čermák et al., WACV 2024), a Swin Transformer trained with ArcFace on many public "
            "animal re-identification datasets by the WildlifeDatasets project (BVRA). The embedding is the "
            "backbone's pooled features (layer-normalised and averaged tokens)."
        ),
        "license": "cc-by-nc-4.0",
        "license_text": (
            "The MegaDescriptor weights on the Hub (BVRA/MegaDescriptor-*) are released under CC BY-NC 4.0: "
            "non-commercial use, with attribution. This conversion keeps that licence."
        ),
        "citation": (
            "Čermák, V., Picek, L., Adam, L., Papafitsoros, K. "
            '"WildlifeDatasets: An open-source toolkit for animal re-identification", WACV 2024.'
        ),
        "tags": ["megadescriptor", "swin"],
        "output_note": (
            "`outputs.features` is what `timm.create_model(..., num_classes=0)` returns for the source weights; "
            "`outputs.embeddings` (and what the pipeline returns) is the same vector L2-normalised."
        ),
        "preprocessing_note": (
            "The interpolation is the one in the source's timm `pretrained_cfg`; there is no centre crop (re-ID "
            "crops are already tight). The WildlifeDatasets baselines extract MegaDescriptor features with "
            "torchvision `Resize([S, S])` (bilinear, antialiased) and ImageNet normalisation: convert with "
            "`--resample bilinear` to reproduce that exactly. The usage snippet in some BVRA model cards "
            "normalises with mean = std = 0.5; the timm config and the authors' code use the ImageNet values."
        ),
    },
}


def render_card(
    *,
    kind: str,
    source_file: str,
    source_sha256: str,
    source_repo: str | None,
    num_tensors: int,
    dropped: list[str],
    config: Any,
    processor: Any,
    embedding_dim: int,
    extra: dict[str, Any] | None = None,
) -> str:
    """The README.md of a converted folder, with Hub metadata (licence, pipeline tag, base model)."""
    if kind not in SOURCES:
        raise ValueError(f"kind must be one of {sorted(SOURCES)}, got {kind!r}")
    src = SOURCES[kind]
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-feature-extraction",
        license=src["license"],
        tags=["animal-re-identification", "image-feature-extraction", "custom_code", *src["tags"]],
        base_model=source_repo,
    )
    h, w = config.image_size
    size = processor.size
    source = f"`{source_repo}` (file `{source_file}`)" if source_repo else f"`{source_file}`"
    dropped_line = (
        f"- Dropped {len(dropped)} training-only tensors (e.g. `{dropped[0]}`): they take no part in the embedding.\n"
        if dropped
        else ""
    )
    extras = "".join(f"- `{k}`: {v}\n" for k, v in (extra or {}).items())
    body = f"""
# {src["title"]}, converted to animal-reid

{src["what"]}

This folder is the same network in the `animal-reid` format: it loads with
`AutoModel.from_pretrained(..., trust_remote_code=True)` on transformers 5, ships its preprocessing, and needs no
download at build time.

## Provenance

- Source: {source}, sha256 `{source_sha256}`.
- Converted on {dt.date.today().isoformat()} by `animal_reid.convert.{kind}`; {num_tensors} tensors checked by name and shape.
{dropped_line}- Backbone: timm `{config.backbone}`; pooling `{config.pooling}`; embedding width {embedding_dim}.
{extras}
## Licence

{src["license_text"]}

## Preprocessing

Squash resize to {size["height"]} × {size["width"]} (`resample="{processor.resample}"`), scale to [0, 1], normalise
with mean {processor.image_mean} and std {processor.image_std}, RGB. {src["preprocessing_note"]}

## Usage

```python
from transformers import AutoModel, pipeline

model = AutoModel.from_pretrained("PATH_OR_REPO", trust_remote_code=True).eval()
emb = model.encode(["a.jpg", "b.jpg"])            # [2, D] float32, unit rows: compare with a dot product

extractor = pipeline("image-feature-extraction", model="PATH_OR_REPO", trust_remote_code=True)
vec = extractor("a.jpg")                          # the same normalised embedding
```

{src["output_note"]} Input size {h} × {w}.

## Citation

{src["citation"]}
"""
    card = ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n" + body)
    return str(card)
