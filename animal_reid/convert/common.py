"""Helpers shared by the checkpoint converters: safe loading, layout checks, writing the Hub folder, and the tail
of their command lines.

Pickled checkpoints (``.bin``, ``.pth``, ``.pt``) are read with ``torch.load(..., weights_only=True)`` only:
a file that needs arbitrary unpickling (a pickled model object, a custom class) is refused, never executed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import pickle
import re
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .model_card import render_card

logger = logging.getLogger(__name__)

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt")
#: Keys under which training scripts commonly nest the state dict.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "weights")


class CheckpointError(ValueError):
    """A checkpoint that cannot be converted: unreadable, unsafe, or not the expected layout."""


@dataclass
class ConversionResult:
    """What a converter wrote and checked."""

    out_dir: Path
    source_file: Path
    source_sha256: str
    num_tensors: int
    dropped: list[str] = field(default_factory=list)
    reload_max_abs_diff: float | None = None


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def find_weights_file(src: Path, candidates: Iterable[str]) -> Path:
    """``src`` itself if it is a file, else the first of ``candidates`` present in the directory ``src``."""
    if not src.exists():
        raise CheckpointError(f"{src}: no such file or directory")
    if src.is_file():
        return src
    candidates = list(candidates)
    for name in candidates:
        if (src / name).is_file():
            return src / name
    present = sorted(p.name for p in src.iterdir())
    raise CheckpointError(
        f"{src}: found none of the weight files {candidates}; the directory holds {present}"
    )


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: cannot read it as JSON ({err})") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a flat ``{name: tensor}`` dict from a ``.safetensors`` or pickled torch file, safely.

    Pickled files go through ``torch.load(weights_only=True)``; common wrappers (``{"state_dict": ...}``,
    ``{"model": ...}``) and a DataParallel ``module.`` prefix are removed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: file is empty (0 bytes)")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        state = _load_safetensors(path, size)
    elif suffix in PICKLE_SUFFIXES:
        state = _load_pickle(path)
    else:
        raise CheckpointError(
            f"{path}: unknown checkpoint type {suffix!r}; expected one of "
            f"{SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES}"
        )
    if not state:
        raise CheckpointError(f"{path}: the checkpoint holds no tensors")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    logger.info("read %d tensors from %s", len(state), path)
    return state


def _load_safetensors(path: Path, size: int) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path), device="cpu"))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({size:,} bytes; truncated or corrupt?): {err}"
        ) from err


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        detail = f"it pickles the object {found.group(1)}" if found else str(err).strip().splitlines()[0]
        raise CheckpointError(
            f"{path}: refused: loading it needs arbitrary unpickling, which can run code from the file "
            f"(torch.load(weights_only=True): {detail}). Only plain state dicts of tensors are "
            "converted; in an environment you trust, re-save it as `torch.save(model.state_dict(), ...)` or "
            "as safetensors first."
        ) from err
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        raise CheckpointError(
            f"{path}: cannot read the torch checkpoint (truncated or corrupt?): {err}"
        ) from err
    return _unwrap(obj, path)


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):
        if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {str(k): v for k, v in obj.items()}
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
        else:
            break
    if isinstance(obj, Mapping):
        kinds = sorted({type(v).__name__ for v in obj.values()})
        raise CheckpointError(
            f"{path}: expected a state dict of tensors (optionally under one of {list(WRAPPER_KEYS)}), "
            f"got a dict with keys {sorted(map(str, obj))[:8]} holding {kinds}"
        )
    raise CheckpointError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")


def check_layout(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    what: str,
    source: str | Path,
) -> None:
    """Raise :class:`CheckpointError` naming missing, unexpected and wrongly shaped tensors."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)}, expected {tuple(expected[k])}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k])
    ]
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing, e.g. {_few(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected, e.g. {_few(unexpected)}")
    if wrong:
        parts.append(f"{len(wrong)} with the wrong shape, e.g. {_few(wrong)}")
    head = f"{source} is not a {what} checkpoint ({len(state)} tensors, {len(expected)} expected): "
    raise CheckpointError(head + "; ".join(parts))


def _few(items: list[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" (+{len(items) - n} more)" if len(items) > n else "")


def check_floats(state: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """Refuse tensors holding NaN or infinity (a broken export would otherwise convert silently)."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{source}: {len(bad)} tensor(s) hold NaN or infinity, e.g. {_few(bad)}")


def save_hub_folder(model, processor, out_dir: Path, card: str, extra_files: Mapping[str, str] | None = None):
    """Write config + ``model.safetensors`` + modeling code, ``preprocessor_config.json`` and ``README.md``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    (out_dir / "README.md").write_text(card, encoding="utf-8")
    for name, text in (extra_files or {}).items():
        (out_dir / name).write_text(text, encoding="utf-8")
    logger.info("wrote %s", out_dir)


def verify_reload(out_dir: Path, model, atol: float = 1e-5, seed: int = 0) -> float:
    """Reload ``out_dir`` with ``AutoModel.from_pretrained(trust_remote_code=True)`` and compare embeddings.

    Returns the largest absolute difference between the in-memory model and the reloaded one on a small random
    batch at the model's input size; raises :class:`CheckpointError` above ``atol``.
    """
    from transformers import AutoModel

    reloaded = AutoModel.from_pretrained(out_dir, trust_remote_code=True).eval()
    h, w = model.config.image_size
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        a = model.eval()(pixel_values=x).embeddings
        b = reloaded(pixel_values=x).embeddings
    diff = float((a - b).abs().max())
    if not diff <= atol:
        raise CheckpointError(
            f"{out_dir}: the reloaded model's embeddings differ from the converted model's by {diff:.3g} "
            f"(tolerance {atol:g}); the saved folder is not usable"
        )
    logger.info("reloaded %s: embeddings match the converted model (max abs diff %.2g)", out_dir, diff)
    return diff


def conversion_summary(result) -> str:
    """The one-line summary the converter CLIs print."""
    line = f"converted {result.source_file} ({result.num_tensors} tensors, {len(result.dropped)} dropped) -> {result.out_dir}"
    if result.reload_max_abs_diff is not None:
        line += f"; reload check max abs diff {result.reload_max_abs_diff:.2g}"
    return line


def write_converted(
    model,
    processor,
    config,
    out_dir: Path,
    weights: Path,
    state: Mapping[str, torch.Tensor],
    dropped: list[str],
    *,
    kind: str,
    source_repo: str | None,
    verify: bool,
    extra: dict[str, Any] | None = None,
) -> ConversionResult:
    """Write a converted model (its ``config``, weights, ``processor`` and model card) into ``out_dir``.

    ``weights`` is the source file (named and hashed in the card), ``state`` its converted tensors, ``kind`` the
    converter (``miewid`` or ``megadescriptor``, see :data:`~animal_reid.convert.model_card.SOURCES`) and
    ``extra`` more provenance lines for the card. With ``verify`` the written folder is reloaded and checked
    (:func:`verify_reload`).
    """
    digest = sha256_of(weights)
    card = render_card(
        kind=kind,
        source_file=weights.name,
        source_sha256=digest,
        source_repo=source_repo,
        num_tensors=len(state),
        dropped=dropped,
        config=config,
        processor=processor,
        embedding_dim=model.embedding_dim,
        extra=extra,
    )
    save_hub_folder(model, processor, out_dir, card)
    result = ConversionResult(out_dir, weights, digest, len(state), dropped)
    if verify:
        result.reload_max_abs_diff = verify_reload(out_dir, model)
    return result


def run_converter_cli(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    convert: Callable[[argparse.Namespace], ConversionResult],
) -> ConversionResult:
    """The end of a converter's command line: add ``--source-repo`` and ``--no-verify`` to ``parser``, parse
    ``argv``, run ``convert(args)`` and print :func:`conversion_summary`; a :class:`CheckpointError` exits with
    status 2 and one ``error:`` line."""
    parser.add_argument(
        "--source-repo", default=None, help="Hub id of the source, recorded in the card (base_model)"
    )
    parser.add_argument(
        "--no-verify", action="store_true", help="skip reloading the written folder to check it"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = convert(args)
    except CheckpointError as err:
        parser.exit(2, f"error: {err}\n")
    print(conversion_summary(result))
    return result
