"""Convert a MiewID checkpoint (Conservation X Labs / Wild Me) to this package's Hub format.

MiewID's published weights (``conservationxlabs/miewid-msv2``, ``-msv3``, ...) are a timm ``efficientnetv2_rw_m``
under ``backbone.*`` (classifier and global pool replaced by identities), a GeM pooling with one learned exponent
``pooling.p`` and a ``BatchNorm1d(2152)`` under ``bn.*``: 1,208 tensors. Its embedding is ``bn(gem(features))``,
2152-d, not L2-normalised (compared by cosine). Older training checkpoints (``.bin``) also hold the ArcFace head
under ``final.*``; MiewID's ``extract_feat`` never uses it (nor an optional ``fc.*``), so both are dropped.

The converted model computes exactly that embedding: ``features`` is MiewID's raw output, ``embeddings`` the same
direction L2-normalised. Preprocessing as MiewID's evaluation code: squash-resize to 440 x 440 with bilinear
interpolation without antialiasing (OpenCV ``INTER_LINEAR``, ``resample="bilinear_noaa"``), ImageNet mean/std, RGB.

Usage::

    python -m animal_reid.convert.miewid path/to/miewid-msv3 converted/miewid-msv3 \\
        --source-repo conservationxlabs/miewid-msv3
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import timm
import torch

from modeling import AnimalReIDConfig, AnimalReIDImageProcessor, AnimalReIDModel
from modeling.configuration_animal_reid import IMAGENET_MEAN, IMAGENET_STD

from .common import (
    CheckpointError,
    ConversionResult,
    check_floats,
    check_layout,
    find_weights_file,
    load_state_dict,
    output_folder,
    read_json,
    run_converter_cli,
    write_converted,
)

logger = logging.getLogger(__name__)

MIEWID_BACKBONE = "efficientnetv2_rw_m"
MIEWID_IMAGE_SIZE = 440
#: Tensors in the published layout: 1,202 backbone + pooling.p + 5 BatchNorm1d tensors.
MIEWID_NUM_TENSORS = 1208
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.bin", "model.pth", "checkpoint.pth")
#: Training-only parts of MiewID checkpoints: the ArcFace head, the unused ``fc`` branch, timm's ImageNet classifier.
DROPPED_PREFIXES = ("final.", "fc.", "backbone.classifier.")
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def expected_layout(backbone: str = MIEWID_BACKBONE, backbone_kwargs: dict | None = None) -> dict[str, tuple]:
    """Tensor names and shapes of a MiewID checkpoint for ``backbone`` (built on the meta device, no memory)."""
    with torch.device("meta"):
        bb = timm.create_model(backbone, pretrained=False, num_classes=0, **(backbone_kwargs or {}))
    shapes = {f"backbone.{k}": tuple(v.shape) for k, v in bb.state_dict().items()}
    dim = int(bb.num_features)
    shapes["pooling.p"] = (1,)
    for k in BN_KEYS:
        shapes[f"bn.{k}"] = () if k == "num_batches_tracked" else (dim,)
    return shapes


def _layout_hint(state: dict[str, torch.Tensor]) -> str:
    keys = list(state)
    if not any(k.startswith("backbone.") for k in keys):
        if any(k.startswith(("layers.", "patch_embed.")) for k in keys):
            return (
                "; it looks like a timm Swin checkpoint (MegaDescriptor): convert it with "
                "`python -m animal_reid.convert.megadescriptor`."
            )
        if any(k.startswith(("conv_stem.", "blocks.")) for k in keys):
            return "; it looks like a bare timm backbone without MiewID's pooling and BatchNorm neck"
    return ""


def read_miewid_state(
    path: Path, backbone: str = MIEWID_BACKBONE
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Load, clean and validate a MiewID checkpoint file; returns the state and the names of dropped tensors."""
    return validate_miewid_state(load_state_dict(path), path, backbone)


def validate_miewid_state(
    state: dict[str, torch.Tensor], source: str | Path, backbone: str = MIEWID_BACKBONE
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Drop training-only tensors, normalise ``pooling.p`` to shape [1], check names, shapes and values.

    Raises :class:`CheckpointError` naming what is missing, unexpected or wrongly shaped.
    """
    state = dict(state)
    dropped = sorted(k for k in state if k.startswith(DROPPED_PREFIXES))
    for k in dropped:
        del state[k]
    if dropped:
        logger.info(
            "dropped %d training-only tensors (%s): not part of MiewID's embedding",
            len(dropped),
            ", ".join(pfx + "*" for pfx in DROPPED_PREFIXES if any(k.startswith(pfx) for k in dropped)),
        )
    p = state.get("pooling.p")
    if p is not None and p.ndim == 0:
        state["pooling.p"] = p.reshape(1)  # some exports save the GeM exponent as a 0-d tensor
    if "bn.num_batches_tracked" not in state and "bn.running_mean" in state:
        state["bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)  # optional counter
    expected = expected_layout(backbone)
    try:
        check_layout(state, expected, f"MiewID ({backbone} + GeM + BatchNorm1d)", source)
    except CheckpointError as err:
        raise CheckpointError(str(err) + _layout_hint(state)) from None
    check_floats(state, source)
    if float(state["pooling.p"].reshape(-1)[0]) <= 0:
        raise CheckpointError(
            f"{source}: GeM exponent pooling.p must be > 0, got {state['pooling.p'].tolist()}"
        )
    return state, dropped


def miewid_config(
    backbone: str = MIEWID_BACKBONE, image_size: int = MIEWID_IMAGE_SIZE, gem_p: float = 3.0
) -> AnimalReIDConfig:
    """The model config of a converted MiewID: GeM (eps 1e-6), no projection, BatchNorm1d neck, ImageNet stats."""
    return AnimalReIDConfig(
        backbone=backbone,
        pooling="gem",
        gem_p=gem_p,
        gem_eps=1e-6,
        embedding_dim=0,
        neck_bn=True,
        image_size=image_size,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )


def miewid_processor(image_size: int = MIEWID_IMAGE_SIZE) -> AnimalReIDImageProcessor:
    """MiewID's evaluation preprocessing: squash resize, bilinear without antialias (cv2 INTER_LINEAR), ImageNet."""
    return AnimalReIDImageProcessor(
        size={"height": image_size, "width": image_size},
        resample="bilinear_noaa",
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )


def convert_miewid(
    src: str | Path,
    out_dir: str | Path,
    *,
    backbone: str | None = None,
    image_size: int = MIEWID_IMAGE_SIZE,
    source_repo: str | None = None,
    verify: bool = True,
    overwrite: bool = False,
) -> ConversionResult:
    """Convert a MiewID ``.safetensors``/``.bin`` file, or a directory holding one, into ``out_dir``.

    ``backbone`` defaults to the ``model_name`` of a MiewID ``config.json`` beside the weights, else
    ``efficientnetv2_rw_m``. ``verify`` reloads the written folder with ``AutoModel`` (remote code) and checks
    that its embeddings equal the converted model's. ``out_dir`` follows the overwrite policy
    (:func:`~animal_reid.convert.common.output_folder`): checked before the source is read.
    """
    src, out_dir = Path(src), Path(out_dir)
    with output_folder(src, out_dir, kind="miewid", overwrite=overwrite) as out:
        weights = find_weights_file(src, WEIGHT_FILES)
        backbone = _miewid_backbone(src, backbone)
        state, dropped = read_miewid_state(weights, backbone)
        p = float(state["pooling.p"].reshape(-1)[0])
        config = miewid_config(backbone, image_size, gem_p=p)
        model = AnimalReIDModel(config).eval()
        ours = {("neck_bn." + k[3:] if k.startswith("bn.") else k): v for k, v in state.items()}
        model.load_state_dict(ours, strict=True)
        processor = miewid_processor(image_size)
        return write_converted(
            model, processor, config, out_dir, weights, state, dropped, kind="miewid", source_repo=source_repo,
            verify=verify, extra={"GeM exponent p": round(p, 6)}, out=out,
        )  # fmt: skip


def _miewid_backbone(src: Path, backbone: str | None) -> str:
    """``backbone``, else the ``model_name`` of MiewID's ``config.json`` beside the weights, else the default."""
    cfg_json = read_json(src / "config.json") if src.is_dir() and (src / "config.json").is_file() else {}
    if cfg_json.get("architecture") and "pretrained_cfg" in cfg_json:
        raise CheckpointError(
            f"{src / 'config.json'} is a timm model config (architecture {cfg_json['architecture']!r}), not "
            "MiewID's; for MegaDescriptor use `python -m animal_reid.convert.megadescriptor`"
        )
    if cfg_json.get("use_fc"):
        logger.info(
            "config.json sets use_fc: MiewID's extract_feat still returns bn(gem(x)); fc.* is dropped"
        )
    return backbone or cfg_json.get("model_name") or MIEWID_BACKBONE


def main(argv: list[str] | None = None) -> ConversionResult | None:
    """The command line: convert, print a one-line summary (exit status 2 and one ``error:`` line on failure).

    Returns the result when ``argv`` is given, None from the command line (the console script exits with it)."""
    parser = argparse.ArgumentParser(
        prog="python -m animal_reid.convert.miewid",
        description="Convert a local MiewID checkpoint (file or directory) to an animal-reid Hub folder.",
    )
    parser.add_argument(
        "src", help="model.safetensors / .bin file, or a directory holding one (and config.json)"
    )
    parser.add_argument(
        "out_dir",
        help="directory to write (config, model.safetensors, processor, README.md): new or empty, outside the "
        "source; a previous conversion there is replaced only with --overwrite",
    )
    parser.add_argument(
        "--backbone", default=None, help=f"timm backbone name (default: config.json or {MIEWID_BACKBONE})"
    )
    parser.add_argument(
        "--image-size", type=int, default=MIEWID_IMAGE_SIZE, help="square input side (default 440)"
    )
    return run_converter_cli(
        parser,
        argv,
        lambda args: convert_miewid(
            args.src,
            args.out_dir,
            backbone=args.backbone,
            image_size=args.image_size,
            source_repo=args.source_repo,
            verify=not args.no_verify,
            overwrite=args.overwrite,
        ),
    )


if __name__ == "__main__":
    main()
