"""Issue 31 for everything that writes or reads model files: the converters' output folder, the training run
folder, the ONNX file, the permissions of exported weights and one-line errors when a model cannot be loaded.

Every input is generated here (random weights of tiny timm models, byte strings, folders of notes); for each kind
at least three, with the exact message asserted and nothing outside the writer's manifest changed.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import hashlib
import json
import os
import random
import stat
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import modeling.modeling_animal_reid as modeling_module
from animal_reid.convert import CheckpointError, convert_megadescriptor
from animal_reid.convert import megadescriptor as mega_cli
from animal_reid.convert import miewid as miewid_cli
from animal_reid.manifest import LOCK_NAME, MANIFEST_NAME, Manifest, OutputError, OutputLockedError
from modeling import AnimalReIDConfig, AnimalReIDModel

ARCH = "swin_tiny_patch4_window7_224"
TINY_SWIN = {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]}
CONVERTERS = {"miewid": miewid_cli.main, "megadescriptor": mega_cli.main}


# ---------------------------------------------------------------------------------------------------------------
# helpers
def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``root`` (our lock excepted): its SHA-256 and permissions."""
    return {
        p.relative_to(root).as_posix(): (
            hashlib.sha256(p.read_bytes()).hexdigest(),
            stat.S_IMODE(p.stat().st_mode),
        )
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != LOCK_NAME
    }


def write_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def swin_source(folder: Path, seed: int = 0) -> Path:
    """A MegaDescriptor-style source (tiny timm Swin, current layout): ``pytorch_model.bin`` + timm config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = timm.create_model(ARCH, pretrained=False, num_classes=0, **TINY_SWIN)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    cfg = {"architecture": ARCH, "model_args": TINY_SWIN, "pretrained_cfg": {"input_size": [3, 224, 224]}}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def not_ours_message(out: Path, entries: list[str], what: str = "output folder") -> str:
    shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    n = f"{len(entries)} {'entry' if len(entries) == 1 else 'entries'}"
    return (
        f"{what} {out} is not empty ({n}: {shown}) and was not written by animal-reid (no "
        f"{MANIFEST_NAME}; an output written before manifests existed has none either): choose a new or empty "
        f"folder, or move it aside first (mv {out} {out}.old)"
    )


def model_files_modes(root: Path) -> dict[str, int]:
    return {
        p.relative_to(root).as_posix(): stat.S_IMODE(p.stat().st_mode)
        for p in root.rglob("model.safetensors")
    }


USER_FOLDERS = {  # what a user may keep in a folder given as an output
    "readme": {"README.md": "# my project\n"},
    "nested": {"notes/plan.txt": "train on lions\n", "photos.csv": "path\n"},
    "hidden": {".hidden": "x", "config.json": "{}", "a/b/c.txt": "deep"},
}


# ---------------------------------------------------------------------------------------------------------------
# 1. converters: the output folder
@pytest.mark.parametrize("converter", sorted(CONVERTERS))
@pytest.mark.parametrize("contents", sorted(USER_FOLDERS))
def test_converter_refuses_a_folder_it_did_not_write(tmp_path, capsys, converter, contents):
    src = swin_source(tmp_path / "src")
    out = tmp_path / "out"
    write_tree(out, USER_FOLDERS[contents])
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as info:
        CONVERTERS[converter]([str(src), str(out), "--no-verify"])
    entries = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)
    assert info.value.code == 2
    assert capsys.readouterr().err == f"error: {not_ours_message(out, entries)}\n"
    assert snapshot(tmp_path) == before  # the user's README (and everything else) untouched


def _placements(tmp_path: Path) -> dict[str, tuple[Path, Path, str]]:
    src = tmp_path / "src"
    tail = ": refusing to write beside the source's files; choose a folder outside it"
    return {
        "out_is_src": (src, src, f"output folder {src} is the source folder {src}{tail}"),
        "out_inside_src": (src, src / "converted", f"output folder {src / 'converted'} lies inside the source folder {src}{tail}"),
        "out_deep_inside_src": (src, src / "a" / "b", f"output folder {src / 'a' / 'b'} lies inside the source folder {src}{tail}"),
        "src_inside_out": (src, tmp_path, f"output folder {tmp_path} holds the input ({src}): refusing to write over it"),
        "src_file_is_out": (src / "pytorch_model.bin", src / "pytorch_model.bin", f"output folder {src / 'pytorch_model.bin'} holds the input ({src / 'pytorch_model.bin'}): refusing to write over it"),
        "src_file_in_out": (src / "pytorch_model.bin", src, f"output folder {src} holds the input ({src / 'pytorch_model.bin'}): refusing to write over it"),
    }  # fmt: skip


@pytest.mark.parametrize("converter", sorted(CONVERTERS))
@pytest.mark.parametrize(
    "placement",
    [
        "out_is_src",
        "out_inside_src",
        "out_deep_inside_src",
        "src_inside_out",
        "src_file_is_out",
        "src_file_in_out",
    ],
)
def test_converter_output_may_not_be_hold_or_lie_in_the_source(tmp_path, capsys, converter, placement):
    swin_source(tmp_path / "src")
    src, out, message = _placements(tmp_path)[placement]
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as info:
        CONVERTERS[converter](
            [
                str(src),
                str(out),
                "--no-verify",
                "--architecture" if converter != "miewid" else "--backbone",
                ARCH,
            ]
        )
    assert info.value.code == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert snapshot(tmp_path) == before  # the source's config.json (and everything else) untouched
    assert not (tmp_path / "src" / "converted").exists() and not (tmp_path / "src" / "a").exists()


EDITS = {  # what a user does to a converted folder before converting again
    "added_file": lambda out: (out / "notes.txt").write_text("my notes"),
    "edited_readme": lambda out: (out / "README.md").write_text("# my edited card\n"),
    "added_folder": lambda out: write_tree(out, {"eval/run1/scores.csv": "a,b\n1,2\n"}),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_converter_overwrite_replaces_only_its_own_files(tmp_path, edit):
    src, out = swin_source(tmp_path / "src"), tmp_path / "out"
    convert_megadescriptor(src, out, verify=False)
    first = Manifest.read(out)
    assert first is not None and {"config.json", "model.safetensors", "README.md"} <= set(first.files)
    EDITS[edit](out)
    user_before = {
        k: v
        for k, v in snapshot(out).items()
        if (k not in first.files and k != MANIFEST_NAME) or (edit == "edited_readme" and k == "README.md")
    }
    with pytest.raises(OutputError) as info:
        convert_megadescriptor(swin_source(tmp_path / "src2", seed=1), out, verify=False)
    assert str(info.value) == (
        f"output folder {out} holds the output of a previous animal_reid.convert.megadescriptor run: pass "
        "--overwrite to replace those files (files you added there are kept), or choose another folder"
    )
    convert_megadescriptor(swin_source(tmp_path / "src2", seed=1), out, verify=False, overwrite=True)
    after = snapshot(out)
    second = Manifest.read(out)
    assert set(second.files) == set(first.files)
    for rel, value in user_before.items():  # the user's files are kept, an edited one under a new name
        if edit == "edited_readme" and rel == "README.md":
            kept = [p for p in out.iterdir() if p.name.startswith("README.md.edited-")]
            assert len(kept) == 1 and kept[0].read_text() == "# my edited card\n"
            assert "my edited card" not in (out / "README.md").read_text()
        else:
            assert after[rel] == value
    unlisted = set(after) - set(second.files) - {MANIFEST_NAME}
    assert unlisted == {k for k in user_before if k != "README.md"} | (
        {p.name for p in out.iterdir() if ".edited-" in p.name}
    )


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_converter_output_has_the_umask_permissions(tmp_path, mask):
    src = swin_source(tmp_path / "src")
    with umask(mask):
        convert_megadescriptor(src, tmp_path / "out", verify=mask == 0o022)
    modes = {rel: mode for rel, (_, mode) in snapshot(tmp_path / "out").items()}
    assert modes["model.safetensors"] == 0o666 & ~mask
    assert set(modes.values()) == {0o666 & ~mask}


# ---------------------------------------------------------------------------------------------------------------
# 2. ONNX export: one file, replaced only with --overwrite
@pytest.fixture(scope="module")
def small_export(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("onnx") / "fe"
    AnimalReIDModel(
        AnimalReIDConfig(backbone="test_efficientnet", image_size=32, embedding_dim=8)
    ).save_pretrained(folder)
    return folder


ONNX_EXISTING = {  # what is already at the output
    "onnx_file": ("m.onnx", "m.onnx", "exists: pass --overwrite to replace it, or choose another file name"),
    "preprocessor_json": ("m.preprocessor.json", "m.preprocessor.json", "exists: pass --overwrite to replace it, or choose another file name"),
    "folder": ("m.onnx/keep.txt", "m.onnx", "is a folder, not a file"),
}  # fmt: skip


@pytest.mark.parametrize("existing", sorted(ONNX_EXISTING))
def test_onnx_export_never_replaces_a_file_without_overwrite(tmp_path, capsys, small_export, existing):
    pytest.importorskip("onnxruntime")
    from animal_reid.onnx_export import main

    rel, named, problem = ONNX_EXISTING[existing]
    write_tree(tmp_path / "out", {rel: "the user's bytes"})
    before = snapshot(tmp_path / "out")
    with pytest.raises(SystemExit) as info:
        main([str(small_export), str(tmp_path / "out" / "m.onnx")])
    assert info.value.code == 2
    assert capsys.readouterr().err == f"error: output {tmp_path / 'out' / named} {problem}\n"
    assert snapshot(tmp_path / "out") == before


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_onnx_overwrite_replaces_atomically_with_the_umask_permissions(tmp_path, small_export, mask):
    pytest.importorskip("onnxruntime")
    from animal_reid.onnx_export import main, onnx_session

    out = tmp_path / "m.onnx"
    write_tree(tmp_path, {"m.onnx": "old", "m.preprocessor.json": "old", "notes.txt": "mine"})
    with umask(mask):
        result = main([str(small_export), str(out), "--overwrite"])
    assert result.ok()
    onnx_session(out)  # a complete model, not the old bytes
    assert json.loads(out.with_suffix(".preprocessor.json").read_text())["size"] == {
        "height": 32,
        "width": 32,
    }
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert not [
        p for p in tmp_path.iterdir() if p.name.startswith(".") and p.name != LOCK_NAME
    ]  # no temp file


# ---------------------------------------------------------------------------------------------------------------
# 3. loading a model: one line naming the file and the problem
def _bad_bytes(seed: int, n: int = 300) -> bytes:
    """Random bytes that are neither a zip archive nor a pickle (first byte never 'P' or 0x80)."""
    data = bytearray(random.Random(seed).randbytes(n))
    data[0] = 0x41 + seed % 20
    return bytes(data)


def _safetensors_bytes(tmp_path: Path) -> bytes:
    save_file({"w": torch.randn(64, 8)}, tmp_path / "ok.safetensors")
    return (tmp_path / "ok.safetensors").read_bytes()


SAFETENSORS_CASES = {  # name -> (make bytes, problem after "PATH: ")
    "empty": (lambda ok: b"", lambda ok, n: "empty file (0 bytes), not a safetensors model"),
    "truncated_data": (lambda ok: ok[:-100], lambda ok, n: f"truncated or corrupt safetensors file ({n:,} bytes, its header describes {len(ok):,})"),
    "truncated_header": (lambda ok: ok[:40], lambda ok, n: f"truncated or not a safetensors file ({n:,} bytes, too short for the header it announces)"),
    "random_bytes": (lambda ok: _bad_bytes(1, 500), lambda ok, n: f"truncated or not a safetensors file ({n:,} bytes, too short for the header it announces)"),
    "extra_bytes": (lambda ok: ok + b"\0" * 16, lambda ok, n: f"truncated or corrupt safetensors file ({n:,} bytes, its header describes {len(ok):,})"),
    "header_not_json": (lambda ok: (12).to_bytes(8, "little") + b"not json!!!!" + b"\0" * 8, lambda ok, n: "not a safetensors file (its 12-byte header is not valid)"),
}  # fmt: skip


@pytest.fixture(scope="module")
def good_export(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("good") / "export"
    AnimalReIDModel(
        AnimalReIDConfig(backbone="test_efficientnet", image_size=32, embedding_dim=8)
    ).save_pretrained(folder)
    return folder


def _copy_export(good: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(good, dest)
    return dest


@pytest.mark.parametrize("loader", ["class", "automodel"])
@pytest.mark.parametrize("case", sorted(SAFETENSORS_CASES))
def test_broken_model_safetensors_is_one_line_naming_it(tmp_path, good_export, loader, case):
    from transformers import AutoModel

    folder = _copy_export(good_export, tmp_path / "export")
    ok = (folder / "model.safetensors").read_bytes()
    make, problem = SAFETENSORS_CASES[case]
    data = make(ok)
    (folder / "model.safetensors").write_bytes(data)
    with pytest.raises(OSError) as info:
        if loader == "class":
            AnimalReIDModel.from_pretrained(folder)
        else:
            AutoModel.from_pretrained(folder, trust_remote_code=True)
    assert str(info.value) == f"{folder / 'model.safetensors'}: {problem(ok, len(data))}"


@pytest.mark.parametrize("case", ["empty", "truncated_data", "random_bytes", "header_not_json"])
def test_broken_safetensors_given_to_the_converter_and_as_init_weights(tmp_path, case):
    from animal_reid.convert.common import load_state_dict
    from animal_reid.weights import load_backbone_file

    ok = _safetensors_bytes(tmp_path)
    make, problem = SAFETENSORS_CASES[case]
    data = make(ok)
    path = tmp_path / "w.safetensors"
    path.write_bytes(data)
    if case == "empty":  # the converters' own check comes first
        expected_converter = f"{path}: file is empty (0 bytes)"
    else:
        expected_converter = f"{path}: {problem(ok, len(data))}"
    with pytest.raises(CheckpointError) as info:
        load_state_dict(path)
    assert str(info.value) == expected_converter
    with pytest.raises(ValueError) as info:
        load_backbone_file(
            AnimalReIDModel(AnimalReIDConfig(backbone="test_efficientnet", image_size=32)), path
        )
    assert str(info.value) == f"{path}: {problem(ok, len(data))}"


TORCH_CASES = {  # name -> (bytes, problem after "PATH: ")
    "random_seed_1": (_bad_bytes(1), "not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle)"),
    "random_seed_2": (_bad_bytes(2, 4000), "not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle)"),
    "text_file": (b"epoch,loss\n1,0.5\n", "not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle)"),
    "png_image": (b"\x89PNG\r\n\x1a\n" + _bad_bytes(3, 100), "not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle)"),
    "broken_zip": (b"PK\x03\x04" + _bad_bytes(4, 200), "not a readable PyTorch checkpoint (truncated or corrupt zip archive)"),
}  # fmt: skip


@pytest.mark.parametrize("suffix", [".bin", ".pth"])
@pytest.mark.parametrize("case", sorted(TORCH_CASES))
def test_random_bytes_as_a_torch_checkpoint_are_named(tmp_path, case, suffix):
    from animal_reid.convert.common import load_state_dict
    from animal_reid.weights import load_backbone_file

    data, problem = TORCH_CASES[case]
    path = tmp_path / f"weights{suffix}"
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as info:
        load_state_dict(path)
    assert str(info.value) == f"{path}: {problem}"
    model = AnimalReIDModel(AnimalReIDConfig(backbone="test_efficientnet", image_size=32))
    with pytest.raises(ValueError) as info:
        load_backbone_file(model, path)
    assert str(info.value) == f"{path}: {problem}"


@pytest.mark.parametrize("case", ["random_seed_1", "text_file", "broken_zip"])
def test_random_bytes_as_pytorch_model_bin_in_an_export(tmp_path, good_export, case, capsys):
    folder = _copy_export(good_export, tmp_path / "export")
    (folder / "model.safetensors").unlink()
    data, problem = TORCH_CASES[case]
    (folder / "pytorch_model.bin").write_bytes(data)
    with pytest.raises(OSError) as info:
        AnimalReIDModel.from_pretrained(folder)
    assert str(info.value) == f"{folder / 'pytorch_model.bin'}: {problem}"
    with pytest.raises(
        SystemExit
    ) as exit_info:  # and a converter given that folder says the same in one line
        miewid_cli.main([str(folder), str(tmp_path / "out"), "--no-verify"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: {folder / 'pytorch_model.bin'}: {problem}\n"


def _unknown_backbone_message(config_json: Path | str, name: str) -> str:
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = (
        f"; did you mean {', '.join(map(repr, close))}?"
        if close
        else "; timm.list_models() lists the valid names"
    )
    return f"{config_json}: unknown backbone {name!r} (not a timm model name{hint})"


@pytest.mark.parametrize(
    "name", ["efficientnet_litex", "resnet5000", "zz-no-such-net", "swin_tiny_patch4_window7"]
)
def test_unknown_backbone_names_the_config_and_valid_names(tmp_path, good_export, name):
    from transformers import AutoModel

    folder = _copy_export(good_export, tmp_path / "export")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["backbone"] = name
    (folder / "config.json").write_text(json.dumps(cfg))
    expected = _unknown_backbone_message(folder / "config.json", name)
    assert "\n" not in expected
    with pytest.raises(ValueError) as info:
        AnimalReIDModel.from_pretrained(folder)
    assert str(info.value) == expected
    with pytest.raises(ValueError) as info:
        AutoModel.from_pretrained(folder, trust_remote_code=True)
    assert str(info.value) == expected
    with pytest.raises(ValueError) as info:  # a config built in memory has no file to name
        AnimalReIDModel(AnimalReIDConfig(backbone=name))
    assert str(info.value) == _unknown_backbone_message("the model config", name)


PERMISSION_CASES = ["model.safetensors", "config.json", "pytorch_model.bin"]


def _deny(monkeypatch, target: Path) -> None:
    """Reading ``target`` fails as for another account's 0600 file (tests run as root, where chmod is no bar)."""
    real_open = open

    def guarded(path, *args, **kwargs):
        if os.fspath(path) == os.fspath(target):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(modeling_module, "open", guarded, raising=False)


@pytest.mark.parametrize("denied", PERMISSION_CASES)
def test_permission_denied_on_model_files_says_so_with_the_path(tmp_path, good_export, monkeypatch, denied):
    from animal_reid.convert.common import load_state_dict
    from animal_reid.weights import load_backbone_file

    folder = _copy_export(good_export, tmp_path / "export")
    if denied == "pytorch_model.bin":
        state = {k: v.contiguous() for k, v in AnimalReIDModel.from_pretrained(folder).state_dict().items()}
        torch.save(state, folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
    target = folder / denied
    if os.geteuid() != 0:
        target.chmod(0)
    _deny(monkeypatch, target)
    with pytest.raises(OSError) as info:
        AnimalReIDModel.from_pretrained(folder)
    assert str(info.value) == f"{target}: permission denied"
    if denied != "config.json":
        with pytest.raises(CheckpointError) as info:
            load_state_dict(target)
        assert str(info.value) == f"{target}: permission denied"
        with pytest.raises(ValueError) as info:
            load_backbone_file(
                AnimalReIDModel(AnimalReIDConfig(backbone="test_efficientnet", image_size=32)), target
            )
        assert str(info.value) == f"{target}: permission denied"


def test_valid_exports_load_as_before(tmp_path, good_export):
    """The checks read headers only: a sound export (safetensors, or a pytorch_model.bin) loads the same tensors."""
    a = AnimalReIDModel.from_pretrained(good_export)
    folder = _copy_export(good_export, tmp_path / "bin")
    torch.save({k: v.contiguous() for k, v in a.state_dict().items()}, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    b = AnimalReIDModel.from_pretrained(folder)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


# ---------------------------------------------------------------------------------------------------------------
# 4. the training run folder: locked, listed, refused unless --resume / --overwrite
def train_args(corpus: Path, out: Path, *extra: str) -> list[str]:
    """test_train_loop's tiny run (test_efficientnet at 64 px, 3 batches), one epoch."""
    return [
        "--corpus", str(corpus), "--output_dir", str(out),
        "--backbone", "test_efficientnet", "--init_weights", "none", "--image_size", "64", "--embedding_dim", "32",
        "--epochs", "1", "--batches_per_epoch", "3", "--identities_per_batch", "4", "--images_per_identity", "2",
        "--num_workers", "0", "--eval_batch_size", "16", "--log_every", "1", "--lr_head", "1e-2", "--lr_backbone", "1e-4",
        *extra,
    ]  # fmt: skip


def _train(corpus: Path, out: Path, *extra: str) -> dict:
    import train_accelerate

    return train_accelerate.main(train_args(corpus, out, *extra))


def listed(run_dir: Path) -> set[str]:
    return set(Manifest.read(run_dir).files)


def run_files(run_dir: Path) -> set[str]:
    return {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()} - {
        MANIFEST_NAME,
        LOCK_NAME,
    }


@pytest.fixture(scope="module")
def base_run(tiny_corpus, tmp_path_factory) -> Path:
    """A finished run that wrote every kind of file: config, log, plots, checkpoint, best, start, results, export."""
    out = tmp_path_factory.mktemp("runs") / "base"
    _train(tiny_corpus, out, "--interpolate_alphas", "0.5")
    return out


def _copy_run(run_dir: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(run_dir, dest)  # copy2: the same times, so the manifest still matches
    return dest


def test_a_run_lists_every_file_it_wrote_with_readable_weights(base_run):
    assert run_files(base_run) == listed(base_run)
    kinds = {rel.split("/")[0] for rel in listed(base_run)}
    assert {"config.yaml", "metrics.jsonl", "train.log", "loss.png", "results.json"} <= kinds
    assert {"checkpoints", "best", "start", "export"} <= kinds
    modes = model_files_modes(base_run)
    assert {
        "export/model.safetensors",
        "start/model.safetensors",
        "checkpoints/checkpoint_0/model.safetensors",
    } <= set(modes) and any(k.startswith("best/") for k in modes)
    assert set(modes.values()) == {0o666 & ~0o022}  # the suite's umask
    assert Manifest.read(base_run).unchanged(base_run, "train.log")  # listed once the log was closed


FOREIGN_RUN_FOLDERS = {  # a folder given as output_dir that no run (with a manifest) wrote, and the flag used
    "readme": (USER_FOLDERS["readme"], ()),
    "nested_with_resume": (USER_FOLDERS["nested"], ("--resume",)),
    "hidden_with_overwrite": (USER_FOLDERS["hidden"], ("--overwrite",)),
    "old_run_without_checkpoints": ({"config.yaml": "epochs: 1\n", "metrics.jsonl": "{}\n"}, ("--resume",)),
}


@pytest.mark.parametrize("case", sorted(FOREIGN_RUN_FOLDERS))
def test_training_refuses_a_folder_it_did_not_write_before_writing(tmp_path, tiny_corpus, case):
    contents, flags = FOREIGN_RUN_FOLDERS[case]
    out = tmp_path / "run"
    write_tree(out, contents)
    before = snapshot(out)
    with pytest.raises(OutputError) as info:
        _train(tiny_corpus, out, *flags)
    entries = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)
    assert str(info.value) == not_ours_message(out, entries, what="output_dir")
    assert snapshot(out) == before and not (out / "train.log").exists() and not (out / MANIFEST_NAME).exists()


def test_training_refusal_is_one_error_line_on_the_command_line(tmp_path, tiny_corpus):
    import subprocess
    import sys

    out = tmp_path / "run"
    write_tree(out, USER_FOLDERS["readme"])
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, str(repo / "train_accelerate.py"), *train_args(tiny_corpus, out)],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().splitlines()[-1]
        == f"error: {not_ours_message(out, ['README.md'], what='output_dir')}"
    )


def test_resume_and_overwrite_together_are_refused(tmp_path, tiny_corpus):
    with pytest.raises(ValueError, match="resume and overwrite contradict each other"):
        _train(tiny_corpus, tmp_path / "run", "--resume", "--overwrite")


OVERWRITE_EDITS = {  # what a user did to a finished run folder before --overwrite, and the umask of the new run
    "notes_beside": ({"notes.txt": "what I saw"}, None, 0o022),
    "file_in_export": ({"export/my_eval.csv": "id,score\n"}, None, 0o002),
    "edited_results": ({}, ("results.json", '{"mine": true}\n'), 0o077),
    "file_in_checkpoint": ({"checkpoints/checkpoint_0/why.txt": "keep this one"}, None, 0o022),
}


@pytest.mark.parametrize("case", sorted(OVERWRITE_EDITS))
def test_overwrite_replaces_only_the_files_the_run_wrote(tmp_path, tiny_corpus, base_run, case):
    added, edited, mask = OVERWRITE_EDITS[case]
    run_dir = _copy_run(base_run, tmp_path / "run")
    write_tree(run_dir, added)
    if edited:
        (run_dir / edited[0]).write_text(edited[1])
    user = {k: v for k, v in snapshot(run_dir).items() if k in added}
    with pytest.raises(OutputError, match="holds a previous training run: pass --resume to continue it"):
        _train(tiny_corpus, run_dir)
    extra = ("--epochs", "2", "--save_total_limit", "1") if case == "file_in_checkpoint" else ()
    with umask(mask):
        _train(tiny_corpus, run_dir, "--overwrite", *extra)
    after = snapshot(run_dir)
    assert {k: after[k] for k in user} == user  # the user's files, unchanged
    aside = [p for p in run_dir.iterdir() if ".edited-" in p.name]
    if edited:  # the edited file of the run kept under a new name, the new run's in its place
        assert [p.read_text() for p in aside] == [edited[1]] and "test" in json.loads(
            (run_dir / "results.json").read_text()
        )
    else:
        assert not aside
    assert run_files(run_dir) - listed(run_dir) == set(user) | {p.name for p in aside}
    assert set(model_files_modes(run_dir).values()) == {0o666 & ~mask}
    assert "start/model.safetensors" not in listed(run_dir)  # the previous run's start weights are gone
    if (
        case == "file_in_checkpoint"
    ):  # the user's checkpoint_0 is kept; the run numbers after it and prunes its own
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["checkpoint_0", "checkpoint_2"]
        assert {k.split("/")[1] for k in listed(run_dir) if k.startswith("checkpoints/")} == {"checkpoint_2"}


@pytest.fixture(scope="module")
def killed_run(tiny_corpus, tmp_path_factory) -> Path:
    """A 2-epoch run stopped right after its first checkpoint."""
    from accelerate import Accelerator

    out = tmp_path_factory.mktemp("killed") / "run"
    original = Accelerator.save_state

    def save_then_die(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise KeyboardInterrupt

    Accelerator.save_state = save_then_die
    try:
        with pytest.raises(KeyboardInterrupt):
            _train(tiny_corpus, out, "--epochs", "2")
    finally:
        Accelerator.save_state = original
    return out


OLD_RUN_EXTRAS = {  # a run folder written before manifests existed, and what its user added to it
    "as_left": {},
    "notes_beside": {"notes.txt": "resume this one"},
    "folder_beside": {"analysis/plot.py": "print(1)\n", "analysis/out.csv": "a\n"},
}


@pytest.mark.parametrize("case", sorted(OLD_RUN_EXTRAS))
def test_resume_adopts_a_run_folder_written_before_manifests(tmp_path, tiny_corpus, killed_run, case):
    run_dir = _copy_run(killed_run, tmp_path / "run")
    (run_dir / MANIFEST_NAME).unlink()
    (run_dir / LOCK_NAME).unlink(missing_ok=True)
    write_tree(run_dir, OLD_RUN_EXTRAS[case])
    user = {k: v for k, v in snapshot(run_dir).items() if k in OLD_RUN_EXTRAS[case]}
    with pytest.raises(OutputError, match="was not written by animal-reid"):  # a new run is refused
        _train(tiny_corpus, run_dir, "--epochs", "2")
    results = _train(tiny_corpus, run_dir, "--epochs", "2", "--resume")
    assert [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [
        1,
        2,
    ]
    assert results["epochs"] == 2 and (run_dir / "export" / "model.safetensors").is_file()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["checkpoint_0", "checkpoint_1"]
    after = snapshot(run_dir)
    assert {k: after[k] for k in user} == user
    assert run_files(run_dir) - listed(run_dir) == set(user)  # everything else is listed as the run's


@pytest.mark.parametrize("flags", [(), ("--resume",), ("--overwrite",)])
def test_a_second_writer_is_refused_while_a_run_holds_the_folder(tmp_path, tiny_corpus, base_run, flags):
    from animal_reid.manifest import FolderLock

    run_dir = _copy_run(base_run, tmp_path / "run")
    before = snapshot(run_dir)
    holder = FolderLock(run_dir, "output_dir")
    holder.acquire()  # as a running training holds it
    try:
        info = json.loads((run_dir / LOCK_NAME).read_text())
        with pytest.raises(OutputLockedError) as err:
            _train(tiny_corpus, run_dir, *flags)
    finally:
        holder.release()
    assert str(err.value) == (
        f"output_dir {run_dir} is being written by {info['command']!r} (process {info['pid']} on {info['host']}, "
        f"since {info['since']}): wait for it to finish or choose another folder"
    )
    assert snapshot(run_dir) == before


# ---------------------------------------------------------------------------------------------------------------
# 5. console scripts: `sys.exit(main())` exits 0 after a success (a returned object printed itself, exit 1)
def test_console_scripts_exit_cleanly(tmp_path, small_export, tiny_corpus, monkeypatch, capsys):
    import sys

    import train_accelerate
    from animal_reid.onnx_export import main as onnx_main

    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(sys, "argv", ["animal-reid-onnx-export", str(small_export), str(tmp_path / "m.onnx")])
    assert onnx_main() is None and (tmp_path / "m.onnx").is_file()
    src = swin_source(tmp_path / "src")
    monkeypatch.setattr(
        sys, "argv", ["animal-reid-convert-megadescriptor", str(src), str(tmp_path / "out"), "--no-verify"]
    )
    assert mega_cli.main() is None and (tmp_path / "out" / "model.safetensors").is_file()
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["animal-reid-train", *train_args(tiny_corpus, tmp_path / "src")])
    with pytest.raises(SystemExit) as info:  # a refused output_dir: one line, status 2
        train_accelerate.main()
    entries = sorted(p.name for p in src.iterdir() if p.name != LOCK_NAME)
    assert info.value.code == 2
    assert capsys.readouterr().err == f"error: {not_ours_message(src, entries, what='output_dir')}\n"


@pytest.mark.parametrize("tool", ["animal_reid.convert.miewid", "identify", "data_scripts.build"])
@pytest.mark.parametrize("flags", [(), ("--resume",)])
def test_training_refuses_the_output_of_another_tool(tmp_path, tiny_corpus, tool, flags):
    from animal_reid.manifest import OutputFolder

    out = tmp_path / "run"
    with OutputFolder(out, tool=tool) as folder:
        stage = folder.staging()
        write_tree(stage, {"config.json": "{}", "results/out.csv": "a\n"})
        folder.commit(stage)
    before = snapshot(out)
    with pytest.raises(OutputError) as info:
        _train(tiny_corpus, out, *flags)
    assert str(info.value) == (
        f"output_dir {out} holds the output of {tool}, not a training run: pass --overwrite to replace those files "
        "(files you added there are kept), or choose another output_dir"
    )
    assert snapshot(out) == before
