"""Helpers shared by the checkpoint converters: safe loading, layout checks, writing the Hub folder, and the tail
of their command lines.

Pickled checkpoints (``.bin``, ``.pth``, ``.pt``) are read with ``torch.load(..., weights_only=True)`` only:
a file that needs arbitrary unpickling (a pickled model object, a custom class) is refused, never executed.

The output folder follows the overwrite policy of :mod:`animal_reid.manifest`: a non-empty folder we did not write
is refused, a previous conversion is replaced only with ``--overwrite`` (files added there are kept), and the
output may not be, hold or lie inside the source.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import pickle
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from animal_reid.manifest import OutputError, OutputFolder, describe_os_error
from modeling.modeling_animal_reid import (
    ModelFileError,
    check_safetensors_file,
    check_torch_file,
    torch_load_problem,
)

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
    except OSError as err:
        raise CheckpointError(describe_os_error(err, path)) from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
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
    if suffix not in SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path}: unknown checkpoint type {suffix!r}; expected one of "
            f"{SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES}"
        )
    try:  # the file's head first: a one-line refusal before a library's paragraph
        (check_safetensors_file if suffix in SAFETENSORS_SUFFIXES else check_torch_file)(path)
    except ModelFileError as err:
        raise CheckpointError(str(err)) from None
    state = _load_safetensors(path, size) if suffix in SAFETENSORS_SUFFIXES else _load_pickle(path)
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
        if not found:  # bytes that only look like a pickle
            raise CheckpointError(torch_load_problem(err, path)) from err
        detail = f"it pickles the object {found.group(1)}"
        raise CheckpointError(
            f"{path}: refused: loading it needs arbitrary unpickling, which can run code from the file "
            f"(torch.load(weights_only=True): {detail}). Only plain state dicts of tensors are "
            "converted; in an environment you trust, re-save it as `torch.save(model.state_dict(), ...)` or "
            "as safetensors first."
        ) from err
    except Exception as err:  # noqa: BLE001 - torch.load raises KeyError, EOFError, RuntimeError... on bad bytes
        raise CheckpointError(torch_load_problem(err, path)) from err
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


@contextlib.contextmanager
def output_folder(
    src: str | Path, out_dir: str | Path, *, kind: str, overwrite: bool
) -> Iterator[OutputFolder]:
    """The converter's output folder, locked and checked (:class:`OutputFolder`) before anything is read or written.

    Refused (:class:`~animal_reid.manifest.OutputError`): ``out_dir`` equal to ``src``, inside it or holding it
    (the source's own ``config.json`` would be replaced), a non-empty folder we did not write, and a previous
    conversion without ``overwrite``.
    """
    src, out_dir = Path(src), Path(out_dir)
    source_dir = (src if src.is_dir() else src.parent).resolve()
    if src.is_dir() and out_dir.resolve().is_relative_to(source_dir):
        where = "is the source folder" if out_dir.resolve() == source_dir else "lies inside the source folder"
        raise OutputError(
            f"output folder {out_dir} {where} {src}: refusing to write beside the source's files; choose a folder "
            "outside it"
        )
    with OutputFolder(
        out_dir, tool=f"animal_reid.convert.{kind}", overwrite=overwrite, what="output folder", keep=[src]
    ) as out:
        yield out


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
    out: OutputFolder | None = None,
) -> ConversionResult:
    """Write a converted model (its ``config``, weights, ``processor`` and model card) into ``out_dir``.

    ``weights`` is the source file (named and hashed in the card), ``state`` its converted tensors, ``kind`` the
    converter (``miewid`` or ``megadescriptor``, see :data:`~animal_reid.convert.model_card.SOURCES`) and
    ``extra`` more provenance lines for the card. The files are written into a staging folder of ``out`` (the
    :func:`output_folder` of ``out_dir``, opened here when not given), reloaded and checked there with ``verify``
    (:func:`verify_reload`), and only then put in place.
    """
    if out is None:
        with output_folder(weights, out_dir, kind=kind, overwrite=False) as opened:
            return write_converted(
                model, processor, config, out_dir, weights, state, dropped, kind=kind,
                source_repo=source_repo, verify=verify, extra=extra, out=opened,
            )  # fmt: skip
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
    stage = out.staging()
    save_hub_folder(model, processor, stage, card)
    result = ConversionResult(out_dir, weights, digest, len(state), dropped)
    if verify:
        result.reload_max_abs_diff = verify_reload(stage, model)
    out.commit(stage)
    return result


def run_converter_cli(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    convert: Callable[[argparse.Namespace], ConversionResult],
) -> ConversionResult | None:
    """The end of a converter's command line: add ``--source-repo``, ``--no-verify`` and ``--overwrite`` to
    ``parser``, parse ``argv``, run ``convert(args)`` and print :func:`conversion_summary`; a
    :class:`CheckpointError` or :class:`~animal_reid.manifest.OutputError` exits with status 2 and one ``error:``
    line. Returns the result when ``argv`` is given (from Python); None from the command line, where the console
    script exits with the return value."""
    parser.add_argument(
        "--source-repo", default=None, help="Hub id of the source, recorded in the card (base_model)"
    )
    parser.add_argument(
        "--no-verify", action="store_true", help="skip reloading the written folder to check it"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a previous conversion in out_dir (only the files it wrote; files you added are kept). "
        "A non-empty folder not written by a converter is always refused.",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = convert(args)
    except (CheckpointError, OutputError) as err:
        parser.exit(2, f"error: {err}\n")
    print(conversion_summary(result))
    return result if argv is not None else None
