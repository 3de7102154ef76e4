"""Convert a MegaDescriptor checkpoint (BVRA, timm Swin) to this package's Hub format.

MegaDescriptor-T/S/B/L-224 and -L-384 are timm Swin Transformers published as ``pytorch_model.bin`` beside a
timm ``config.json`` (``architecture``, ``num_classes``, ``pretrained_cfg`` with ``input_size``, ``mean``,
``std``, ``interpolation``). The embedding is the backbone's pooled features (``forward_head(pre_logits=True)``),
so the converted model uses ``pooling="backbone"``, no projection and no BatchNorm neck.

Two traps are handled here:

* Checkpoints written before timm 0.9 put Swin's patch merging at the *end* of a stage
  (``layers.0.downsample.*``) and keep the ``relative_position_index`` / ``attn_mask`` buffers; timm's own
  ``checkpoint_filter_fn`` moves the merges to the start of the next stage and drops the buffers.
* Those buffers are non-persistent in timm, so they are in no checkpoint; transformers 5 would bring them back
  as garbage on ``from_pretrained``. The package's model makes them persistent: they are rebuilt here and saved.

Usage::

    python -m animal_reid.convert.megadescriptor path/to/MegaDescriptor-L-384 converted/megadescriptor-l-384 \\
        --source-repo BVRA/MegaDescriptor-L-384
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models.swin_transformer import SwinTransformer, checkpoint_filter_fn

from modeling import AnimalReIDConfig, AnimalReIDImageProcessor, AnimalReIDModel
from modeling.configuration_animal_reid import IMAGENET_MEAN, IMAGENET_STD
from modeling.image_processing_animal_reid import RESAMPLES

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

#: The published MegaDescriptor models and their timm architectures.
MEGADESCRIPTOR_ARCHITECTURES = {
    "MegaDescriptor-T-224": "swin_tiny_patch4_window7_224",
    "MegaDescriptor-S-224": "swin_small_patch4_window7_224",
    "MegaDescriptor-B-224": "swin_base_patch4_window7_224",
    "MegaDescriptor-L-224": "swin_large_patch4_window7_224",
    "MegaDescriptor-L-384": "swin_large_patch4_window12_384",
}
WEIGHT_FILES = ("pytorch_model.bin", "model.safetensors", "open_clip_pytorch_model.bin", "checkpoint.pth")
_BUFFERS = ("relative_position_index", "attn_mask")


def check_architecture(architecture: str) -> None:
    """Refuse names that are not timm Swin (v1) Transformers, the family of every MegaDescriptor."""
    if not timm.is_model(architecture):
        raise CheckpointError(f"architecture {architecture!r} is not a timm model name")
    if not timm.models.is_model_in_modules(architecture, ["swin_transformer"]):
        raise CheckpointError(
            f"architecture {architecture!r} is not a timm SwinTransformer; MegaDescriptor models are Swin: "
            f"{sorted(set(MEGADESCRIPTOR_ARCHITECTURES.values()))}"
        )


def _build_meta(architecture: str, backbone_kwargs: dict[str, Any]) -> SwinTransformer:
    check_architecture(architecture)
    with torch.device("meta"):
        return timm.create_model(architecture, pretrained=False, num_classes=0, **backbone_kwargs)


def _resample(name: str | None) -> str:
    if name in RESAMPLES:
        return name
    logger.warning("pretrained_cfg interpolation %r is not one of %s; using bicubic", name, RESAMPLES)
    return "bicubic"


def read_megadescriptor_state(
    path: Path, architecture: str, backbone_kwargs: dict[str, Any]
) -> tuple[dict[str, torch.Tensor], list[str], int]:
    """Load, re-layout (old timm Swin) and validate; returns the state, dropped head tensors, dropped buffers."""
    meta = _build_meta(architecture, backbone_kwargs)
    raw = load_state_dict(path)
    if any(k.startswith("backbone.") for k in raw) and any(k.startswith(("bn.", "pooling.")) for k in raw):
        raise CheckpointError(
            f"{path} holds a MiewID-style checkpoint (backbone.*, pooling.*, bn.*), not a timm Swin one; "
            "convert it with `python -m animal_reid.convert.miewid`"
        )
    n_buffers = sum(1 for k in raw if k.rsplit(".", 1)[-1] in _BUFFERS)
    try:
        state = checkpoint_filter_fn(raw, meta)
    except (AttributeError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot map it onto timm {architecture}: {err}") from err
    dropped = sorted(k for k in raw if k.startswith("head."))  # named as in the file
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    if dropped:
        logger.info(
            "dropped the classifier head (%s): the embedding is the pooled features", ", ".join(dropped)
        )
    expected = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
    check_layout(state, expected, f"timm {architecture}", path)
    check_floats(state, path)
    return state, dropped, n_buffers


def read_timm_config(src: Path, architecture: str | None = None) -> tuple[dict[str, Any], str]:
    """The timm ``config.json`` beside the weights (``{}`` when there is none) and the Swin architecture to build:
    ``architecture`` if given, else the config's; :class:`CheckpointError` when neither names a timm Swin."""
    cfg_path = (src if src.is_dir() else src.parent) / "config.json"
    cfg_json = read_json(cfg_path) if cfg_path.is_file() else {}
    if cfg_json and "architecture" not in cfg_json and architecture is None:
        raise CheckpointError(
            f"{cfg_path} has no 'architecture' (keys {sorted(cfg_json)}): not a timm config"
            + (
                " (it looks like MiewID's; use animal_reid.convert.miewid)"
                if "model_name" in cfg_json
                else ""
            )
        )
    architecture = architecture or cfg_json.get("architecture")
    if not architecture:
        raise CheckpointError(
            f"{src}: no timm config.json beside the weights; pass the architecture, one of "
            f"{sorted(set(MEGADESCRIPTOR_ARCHITECTURES.values()))}"
        )
    check_architecture(architecture)
    return cfg_json, architecture


def swin_settings(
    architecture: str,
    cfg_json: dict[str, Any],
    backbone_kwargs: dict[str, Any] | None,
    image_size: int | None,
    resample: str | None,
) -> tuple[dict[str, Any], list[int], Any, Any, str]:
    """The ``timm.create_model`` arguments and the preprocessing of a MegaDescriptor: ``(backbone kwargs, input
    size [h, w], mean, std, resample)`` from the config's ``model_args`` and ``pretrained_cfg``, overridden by
    the arguments given; an input size other than the architecture's default sets ``img_size``."""
    kwargs = dict(cfg_json.get("model_args") or {}) if backbone_kwargs is None else dict(backbone_kwargs)
    kwargs.pop("num_classes", None)
    kwargs.pop("pretrained", None)
    pcfg = dict(cfg_json.get("pretrained_cfg") or {})
    default_size = timm.get_pretrained_cfg_value(architecture, "input_size") or (3, 224, 224)
    size = list((pcfg.get("input_size") or default_size)[-2:])
    if image_size is not None:
        size = [image_size, image_size]
    if tuple(size) != tuple(default_size[-2:]) and "img_size" not in kwargs:
        kwargs["img_size"] = list(size)
    mean = pcfg.get("mean") or IMAGENET_MEAN
    std = pcfg.get("std") or IMAGENET_STD
    if not pcfg:
        logger.info("no pretrained_cfg found: using ImageNet mean/std and bicubic resize at %s", size)
    resample = resample or _resample(pcfg.get("interpolation", "bicubic"))
    return kwargs, size, mean, std, resample


def load_swin_model(
    config: AnimalReIDConfig, state: dict[str, torch.Tensor], n_buffers: int, weights: Path
) -> AnimalReIDModel:
    """The model of ``config`` holding ``state``, its relative-position and attention-mask buffers rebuilt from the
    architecture; :class:`CheckpointError` when any other tensor is missing or left over."""
    model = AnimalReIDModel(config).eval()
    result = model.load_state_dict({f"backbone.{k}": v for k, v in state.items()}, strict=False)
    not_rebuilt = [k for k in result.missing_keys if k.rsplit(".", 1)[-1] not in _BUFFERS]
    if not_rebuilt or result.unexpected_keys:
        raise CheckpointError(
            f"{weights}: after mapping, missing {not_rebuilt[:5]} and unexpected {result.unexpected_keys[:5]}"
        )
    logger.info(
        "rebuilt %d relative-position/attention-mask buffers from the architecture (the file held %d, not used)",
        len(result.missing_keys),
        n_buffers,
    )
    return model


def convert_megadescriptor(
    src: str | Path,
    out_dir: str | Path,
    *,
    architecture: str | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    image_size: int | None = None,
    resample: str | None = None,
    source_repo: str | None = None,
    verify: bool = True,
    overwrite: bool = False,
) -> ConversionResult:
    """Convert a MegaDescriptor directory (``pytorch_model.bin`` + timm ``config.json``) or file into ``out_dir``.

    ``architecture`` is required when ``src`` is a bare file; it overrides ``config.json`` otherwise.
    ``backbone_kwargs`` are passed to ``timm.create_model`` (``config.json``'s ``model_args`` by default).
    ``out_dir`` follows the overwrite policy (:func:`~animal_reid.convert.common.output_folder`): checked before
    the source is read.
    """
    src, out_dir = Path(src), Path(out_dir)
    with output_folder(src, out_dir, kind="megadescriptor", overwrite=overwrite) as out:
        weights = find_weights_file(src, WEIGHT_FILES)
        cfg_json, architecture = read_timm_config(src, architecture)
        kwargs, size, mean, std, resample = swin_settings(
            architecture, cfg_json, backbone_kwargs, image_size, resample
        )
        state, dropped, n_buffers = read_megadescriptor_state(weights, architecture, kwargs)
        config = AnimalReIDConfig(
            backbone=architecture, backbone_kwargs=kwargs, pooling="backbone", embedding_dim=0, neck_bn=False,
            image_size=size, image_mean=mean, image_std=std,
        )  # fmt: skip
        model = load_swin_model(config, state, n_buffers, weights)
        processor = AnimalReIDImageProcessor(
            size={"height": size[0], "width": size[1]}, resample=resample, image_mean=mean, image_std=std
        )
        return write_converted(
            model, processor, config, out_dir, weights, state, dropped, kind="megadescriptor",
            source_repo=source_repo, verify=verify, out=out,
        )  # fmt: skip


def main(argv: list[str] | None = None) -> ConversionResult | None:
    """The command line: convert, print a one-line summary (exit status 2 and one ``error:`` line on failure).

    Returns the result when ``argv`` is given, None from the command line (the console script exits with it)."""
    parser = argparse.ArgumentParser(
        prog="python -m animal_reid.convert.megadescriptor",
        description="Convert a local MegaDescriptor (timm Swin) checkpoint to an animal-reid Hub folder.",
    )
    parser.add_argument("src", help="directory with pytorch_model.bin + timm config.json, or the weight file")
    parser.add_argument(
        "out_dir",
        help="directory to write (config, model.safetensors, processor, README.md): new or empty, outside the "
        "source; a previous conversion there is replaced only with --overwrite",
    )
    parser.add_argument(
        "--architecture",
        default=None,
        help="timm Swin name (default: config.json); MegaDescriptor uses "
        + ", ".join(f"{v} ({k})" for k, v in MEGADESCRIPTOR_ARCHITECTURES.items()),
    )
    parser.add_argument(
        "--image-size", type=int, default=None, help="square input side (default: pretrained_cfg)"
    )
    parser.add_argument(
        "--resample", choices=RESAMPLES, default=None, help="resize filter (default: pretrained_cfg)"
    )
    return run_converter_cli(
        parser,
        argv,
        lambda args: convert_megadescriptor(
            args.src,
            args.out_dir,
            architecture=args.architecture,
            image_size=args.image_size,
            resample=args.resample,
            source_repo=args.source_repo,
            verify=not args.no_verify,
            overwrite=args.overwrite,
        ),
    )


if __name__ == "__main__":
    main()
