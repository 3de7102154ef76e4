"""MegaDescriptor (timm Swin) conversion: checkpoints built from random timm models, no download.

The reference forward is timm's own ``forward_head(forward_features(x), pre_logits=True)`` on the source tensors.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoModel, pipeline

from animal_reid.convert import CheckpointError, convert_megadescriptor
from animal_reid.convert.megadescriptor import MEGADESCRIPTOR_ARCHITECTURES, main
from modeling import AnimalReIDImageProcessor

TINY = {"embed_dim": 16, "depths": [2, 2, 2, 2], "num_heads": [1, 1, 2, 2]}
ARCH = "swin_tiny_patch4_window7_224"
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _images(n: int, size=(150, 120)) -> list[Image.Image]:
    """Smooth random colour fields (distinct enough that embeddings rank them)."""
    out = []
    for i in range(n):
        g = torch.Generator().manual_seed(100 + i)
        small = torch.rand(3, 6, 5, generator=g)
        big = F.interpolate(small[None], size=(size[1], size[0]), mode="bicubic", align_corners=False)[0]
        arr = (big.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        out.append(Image.fromarray(arr))
    return out


def _timm_swin(seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(ARCH, pretrained=False, num_classes=5, **{**TINY, **kwargs}).eval()
    with torch.no_grad():  # make LayerNorms and position biases non-trivial
        for name, p in model.named_parameters():
            if name.endswith("relative_position_bias_table") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _old_layout(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The pre-timm-0.9 Swin layout: merges at the end of a stage, head.*, and the buffers saved."""
    sd = {}
    for k, v in model.state_dict().items():
        k = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k)
        sd[k.replace("head.fc.", "head.")] = v.clone()
    for name, buf in model.named_buffers():
        if name.endswith(("relative_position_index", "attn_mask")):
            sd[name] = buf.clone()
    return sd


def _write_source(
    directory: Path, state: dict[str, torch.Tensor], arch=ARCH, model_args=TINY, size=224
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(state, directory / "pytorch_model.bin")
    cfg = {
        "architecture": arch,
        "num_classes": 5,
        "num_features": 8 * model_args["embed_dim"] if model_args else 768,
        "pretrained_cfg": {
            "input_size": [3, size, size],
            "interpolation": "bicubic",
            "mean": MEAN,
            "std": STD,
            "crop_pct": 0.9,
            "num_classes": 5,
        },
    }
    if model_args:
        cfg["model_args"] = model_args
    (directory / "config.json").write_text(json.dumps(cfg))
    return directory


def _reference(model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(pixel_values), pre_logits=True)
    return F.normalize(feats, dim=-1)


def _assert_same_ranking(a: torch.Tensor, b: torch.Tensor) -> None:
    assert torch.equal(torch.argsort(a @ a.T, dim=1), torch.argsort(b @ b.T, dim=1))


@pytest.fixture(scope="module")
def old_layout_source(tmp_path_factory):
    model = _timm_swin(seed=1)
    src = _write_source(tmp_path_factory.mktemp("mega_src"), _old_layout(model))
    return model, src


@pytest.fixture(scope="module")
def converted(old_layout_source, tmp_path_factory):
    model, src = old_layout_source
    out = tmp_path_factory.mktemp("mega_out") / "converted"
    result = convert_megadescriptor(src, out, source_repo="BVRA/MegaDescriptor-T-224", verify=True)
    return model, out, result


def test_old_layout_converts_and_reloads_with_remote_code(converted):
    model, out, result = converted
    assert result.reload_max_abs_diff is not None and result.reload_max_abs_diff <= 1e-5
    assert result.dropped == ["head.bias", "head.weight"]
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= {
        p.name for p in out.iterdir()
    }
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["pooling"], cfg["embedding_dim"], cfg["neck_bn"], cfg["image_size"]) == (
        "backbone",
        0,
        False,
        [224, 224],
    )
    proc = json.loads((out / "preprocessor_config.json").read_text())
    assert proc["resample"] == "bicubic" and proc["size"] == {"height": 224, "width": 224}
    assert proc["image_mean"] == MEAN and proc["image_std"] == STD

    loaded = AutoModel.from_pretrained(out, trust_remote_code=True).eval()
    x = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = loaded(pixel_values=x).embeddings
    ref = _reference(model, x)
    assert (ours - ref).abs().max() <= 1e-5
    _assert_same_ranking(ours, ref)
    # the trap: the saved relative position indices are the real ones, not garbage from from_pretrained
    idx = dict(loaded.named_buffers())["backbone.layers.0.blocks.0.attn.relative_position_index"]
    assert torch.equal(idx, model.layers[0].blocks[0].attn.relative_position_index)


def test_pipeline_returns_the_reference_direction(converted):
    model, out, _ = converted
    images = _images(5)
    extractor = pipeline("image-feature-extraction", model=str(out), trust_remote_code=True)
    got = torch.tensor(
        np.array([np.asarray(extractor(im)).reshape(-1) for im in images]), dtype=torch.float32
    )
    proc = AnimalReIDImageProcessor.from_pretrained(out)
    ref = _reference(model, proc(images)["pixel_values"])
    assert got.shape == ref.shape == (5, 128)
    assert (got - ref).abs().max() <= 1e-5
    _assert_same_ranking(got, ref)


def test_current_timm_layout_safetensors_file_with_architecture_flag(tmp_path):
    from safetensors.torch import save_file

    model = _timm_swin(seed=2)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("head.")}
    save_file(state, tmp_path / "weights.safetensors")
    out = tmp_path / "out"
    # a bare file: no config.json, so the architecture and kwargs come from the caller
    result = convert_megadescriptor(
        tmp_path / "weights.safetensors",
        out,
        architecture=ARCH,
        backbone_kwargs=TINY,
        resample="bilinear",  # e.g. to match the WildlifeDatasets baselines' torchvision Resize
        verify=False,
    )
    assert result.dropped == [] and result.num_tensors == len(state)
    assert AnimalReIDImageProcessor.from_pretrained(out).resample == "bilinear"
    card = (out / "README.md").read_text()
    assert "license: cc-by-nc-4.0" in card and "base_model" not in card
    loaded = AutoModel.from_pretrained(out, trust_remote_code=True).eval()
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = loaded(pixel_values=x).embeddings
    assert (ours - _reference(model, x)).abs().max() <= 1e-5


def test_bare_file_without_architecture_is_refused(tmp_path):
    torch.save(_timm_swin().state_dict(), tmp_path / "w.bin")
    with pytest.raises(CheckpointError, match="pass the architecture"):
        convert_megadescriptor(tmp_path / "w.bin", tmp_path / "out", verify=False)


def test_wrong_architecture_names_the_shape_mismatch(tmp_path):
    src = _write_source(tmp_path / "src", _old_layout(_timm_swin()))
    # config says embed_dim 16, caller claims 24: every weight has the wrong width
    with pytest.raises(CheckpointError, match=r"wrong shape, e\.g\. .*patch_embed\.proj\.weight"):
        convert_megadescriptor(src, tmp_path / "out", backbone_kwargs={**TINY, "embed_dim": 24}, verify=False)


def test_missing_stage_is_named(tmp_path):
    state = {k: v for k, v in _old_layout(_timm_swin()).items() if not k.startswith("layers.3.")}
    src = _write_source(tmp_path / "src", state)
    with pytest.raises(CheckpointError, match=r"missing, e\.g\. layers\.3\.blocks\.0"):
        convert_megadescriptor(src, tmp_path / "out", verify=False)
    assert not (tmp_path / "out").exists()


def test_non_swin_architecture_is_refused(tmp_path):
    src = _write_source(tmp_path / "src", _old_layout(_timm_swin()), arch="resnet10t", model_args=None)
    with pytest.raises(CheckpointError, match="not a timm SwinTransformer"):
        convert_megadescriptor(src, tmp_path / "out", verify=False)


def test_published_architectures_build_with_expected_widths():
    widths = {"T": 768, "S": 768, "B": 1024, "L": 1536}
    for name, arch in MEGADESCRIPTOR_ARCHITECTURES.items():
        with torch.device("meta"):
            m = timm.create_model(arch, pretrained=False, num_classes=0)
        assert m.num_features == widths[name.split("-")[1]], name
        assert timm.get_pretrained_cfg_value(arch, "input_size")[-1] == int(name.split("-")[2]), name


def test_cli_reports_errors_with_exit_code_2(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path / "src"), str(tmp_path / "out")])
    assert info.value.code == 2
    assert "found none of the weight files" in capsys.readouterr().err


def test_converted_swin_is_explained_with_gradient_x_activation(converted):
    """PAIR-X on a converted MegaDescriptor (random weights here: the published ones cannot be downloaded): Swin's
    attention has no LRP rules, so relevance is gradient x activation; the stage output is NHWC in timm."""
    from animal_reid.explain import default_method, explain_pair, stage_grids
    from animal_reid.explain.features import default_stage

    _, out, _ = converted
    model = AutoModel.from_pretrained(out, trust_remote_code=True).eval()
    processor = AnimalReIDImageProcessor.from_pretrained(out)
    assert default_method(model) == "gradxact"
    assert stage_grids(model)[default_stage(model)] == (14, 14)
    a, b = _images(2)
    found = explain_pair(model, processor, a, b, top=8)
    assert found.method == "gradxact" and len(found.xy_a) == 8 and found.heat_a.shape == (14, 14)
    assert bool(((found.xy_a >= 0) & (found.xy_a <= [a.width, a.height])).all())
    with torch.no_grad():
        x = torch.stack([processor.preprocess_one(im) for im in (a, b)])
        e = model(pixel_values=x).embeddings
    assert found.cosine == pytest.approx(float(e[0] @ e[1]), abs=1e-4)
