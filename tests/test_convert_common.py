"""Safe checkpoint loading shared by the converters: no arbitrary unpickling, clear refusals."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from animal_reid.convert.common import CheckpointError, check_layout, find_weights_file, load_state_dict


class NotAWeight:
    """A custom class: unpickling it would need arbitrary code, so the loader must refuse the file."""

    def __init__(self):
        self.payload = "would run on load"


def test_pickle_with_custom_class_is_refused(tmp_path):
    torch.save({"model": NotAWeight(), "weight": torch.zeros(2)}, tmp_path / "evil.bin")
    with pytest.raises(CheckpointError, match=r"refused: loading it needs arbitrary unpickling.*NotAWeight"):
        load_state_dict(tmp_path / "evil.bin")


def test_whole_pickled_module_is_refused(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")
    with pytest.raises(CheckpointError, match=r"arbitrary unpickling.*torch\.nn\.modules\.linear\.Linear"):
        load_state_dict(tmp_path / "module.pth")


def test_wrapped_and_dataparallel_state_dicts_are_unwrapped(tmp_path):
    sd = {"module.a.weight": torch.ones(2, 3), "module.a.bias": torch.zeros(2)}
    torch.save({"state_dict": sd, "epoch": 3, "best_score": 0.5}, tmp_path / "ckpt.pth")
    out = load_state_dict(tmp_path / "ckpt.pth")
    assert set(out) == {"a.weight", "a.bias"} and torch.equal(out["a.weight"], torch.ones(2, 3))


def test_truncated_pickle_and_safetensors_are_refused(tmp_path):
    torch.save({"w": torch.randn(1000)}, tmp_path / "full.bin")
    data = (tmp_path / "full.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        CheckpointError, match=r"not a readable PyTorch checkpoint \(truncated or corrupt zip"
    ):
        load_state_dict(tmp_path / "cut.bin")
    save_file({"w": torch.randn(1000)}, tmp_path / "full.safetensors")
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match="cut.safetensors: truncated or corrupt safetensors file"):
        load_state_dict(tmp_path / "cut.safetensors")


def test_other_refusals(tmp_path):
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match="file is empty"):
        load_state_dict(tmp_path / "empty.bin")
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown checkpoint type '.onnx'"):
        load_state_dict(tmp_path / "w.onnx")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pth")
    with pytest.raises(CheckpointError, match="expected a state dict of tensors"):
        load_state_dict(tmp_path / "meta.pth")
    with pytest.raises(CheckpointError, match="found none of the weight files"):
        find_weights_file(tmp_path, ["model.safetensors"])


def test_check_layout_names_each_problem():
    state = {"a": torch.zeros(2), "b": torch.zeros(3), "c": torch.zeros(1)}
    with pytest.raises(CheckpointError) as info:
        check_layout(state, {"a": (2,), "b": (4,), "d": (1,)}, "toy", "x.bin")
    msg = str(info.value)
    assert "1 missing, e.g. d" in msg and "1 unexpected, e.g. c" in msg
    assert "b: checkpoint (3,), expected (4,)" in msg
    check_layout({"a": torch.zeros(2)}, {"a": (2,)}, "toy", "x.bin")  # a matching layout passes
