"""MiewID conversion: a checkpoint in MiewID's published layout, built from a random timm efficientnetv2_rw_m.

The reference forward is written out here from the same tensors: timm ``forward_features`` -> GeM by hand ->
BatchNorm1d by hand (eval mode). No download; the backbone is built once per module.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from transformers import pipeline

from animal_reid.convert import CheckpointError, convert_miewid
from animal_reid.convert.miewid import (
    MIEWID_NUM_TENSORS,
    expected_layout,
    main,
    miewid_config,
    miewid_processor,
    validate_miewid_state,
)

DIM = 2152
P = 2.71
SIZE = 96


def _images(n: int, size=(180, 140)) -> list[Image.Image]:
    out = []
    for i in range(n):
        g = torch.Generator().manual_seed(200 + i)
        small = torch.rand(3, 7, 5, generator=g)
        big = F.interpolate(small[None], size=(size[1], size[0]), mode="bicubic", align_corners=False)[0]
        out.append(Image.fromarray((big.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()))
    return out


def _well_conditioned_backbone() -> torch.nn.Module:
    """A random efficientnetv2_rw_m whose activations stay O(1), like a trained network's.

    With timm's random init the activations reach ~1e6 by the last stage and the network turns numerically
    chaotic (batch of 1 vs batch of 2 differ by 50 %), which no conversion could match. Damping the blocks'
    BatchNorm scales and setting the head BatchNorm's statistics from one forward pass fixes that.
    """
    torch.manual_seed(0)
    backbone = timm.create_model("efficientnetv2_rw_m", pretrained=False, num_classes=0).eval()
    with torch.no_grad():
        for mod in backbone.blocks.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.weight.mul_(0.8)
        x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(5))
        h = backbone.conv_head(backbone.blocks(backbone.bn1(backbone.conv_stem(x))))
        backbone.bn2.running_mean.copy_(h.mean(dim=(0, 2, 3)))
        backbone.bn2.running_var.copy_(h.var(dim=(0, 2, 3)))
    return backbone


@pytest.fixture(scope="module")
def miewid_state() -> dict[str, torch.Tensor]:
    """MiewID's published layout: backbone.* (timm, no classifier), pooling.p [1], bn.* BatchNorm1d(2152)."""
    backbone = _well_conditioned_backbone()
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    state["pooling.p"] = torch.tensor([P])
    state["bn.weight"] = 1.0 + 0.2 * torch.randn(DIM, generator=g)
    state["bn.bias"] = 0.1 * torch.randn(DIM, generator=g)
    state["bn.running_mean"] = 0.01 * torch.rand(DIM, generator=g)
    state["bn.running_var"] = 0.01 * (0.5 + torch.rand(DIM, generator=g))
    state["bn.num_batches_tracked"] = torch.tensor(1234)
    return state


@pytest.fixture(scope="module")
def converted(miewid_state, tmp_path_factory):
    src = tmp_path_factory.mktemp("miewid_src")
    save_file({k: v.contiguous() for k, v in miewid_state.items()}, src / "model.safetensors")
    (src / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["MiewIdNet"],
                "model_type": "miewid",
                "model_name": "efficientnetv2_rw_m",
                "n_classes": 10,
                "use_fc": False,
                "k": 3,
            }
        )
    )
    out = tmp_path_factory.mktemp("miewid_out") / "converted"
    # 96 px instead of MiewID's 440 keeps the CPU test fast; the 440 defaults are checked separately
    result = convert_miewid(
        src, out, image_size=SIZE, source_repo="conservationxlabs/miewid-msv3", verify=False
    )
    return out, result


@pytest.fixture(scope="module")
def reference(miewid_state):
    """MiewID's extract_feat written out from the source tensors: forward_features, GeM, BatchNorm1d (eval)."""
    backbone = timm.create_model("efficientnetv2_rw_m", pretrained=False, num_classes=0).eval()
    backbone.load_state_dict(
        {k[len("backbone.") :]: v for k, v in miewid_state.items() if k.startswith("backbone.")}
    )
    p = miewid_state["pooling.p"].reshape(())
    bn = {k[3:]: v for k, v in miewid_state.items() if k.startswith("bn.")}

    def forward(pixel_values: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            fmap = backbone.forward_features(pixel_values)
            pooled = fmap.clamp(min=1e-6).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)
            x = (pooled - bn["running_mean"]) / torch.sqrt(bn["running_var"] + 1e-5)
            return x * bn["weight"] + bn["bias"]

    return forward


def _assert_same_ranking(a: torch.Tensor, b: torch.Tensor) -> None:
    assert torch.equal(torch.argsort(a @ a.T, dim=1), torch.argsort(b @ b.T, dim=1))


def test_published_layout_has_1208_tensors():
    assert len(expected_layout()) == MIEWID_NUM_TENSORS == 1208


def test_defaults_are_miewids_published_preprocessing():
    cfg, proc = miewid_config(gem_p=P), miewid_processor()
    assert cfg.image_size == [440, 440] and cfg.pooling == "gem" and cfg.gem_p == pytest.approx(P)
    assert cfg.embedding_dim == 0 and cfg.neck_bn and cfg.gem_eps == 1e-6
    assert proc.size == {"height": 440, "width": 440} and proc.resample == "bilinear_noaa"
    assert proc.image_mean == cfg.image_mean == [0.485, 0.456, 0.406]
    assert proc.image_std == cfg.image_std == [0.229, 0.224, 0.225]


def test_converts_reloads_and_pipeline_gives_the_reference_direction(reference, converted):
    out, result = converted
    assert result.num_tensors == 1208 and result.dropped == []
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["backbone"] == "efficientnetv2_rw_m" and cfg["pooling"] == "gem"
    assert cfg["embedding_dim"] == 0 and cfg["neck_bn"] is True and cfg["image_size"] == [SIZE, SIZE]
    assert cfg["gem_p"] == pytest.approx(P)
    proc = json.loads((out / "preprocessor_config.json").read_text())
    assert proc["size"] == {"height": SIZE, "width": SIZE} and proc["resample"] == "bilinear_noaa"
    assert proc["image_mean"] == [0.485, 0.456, 0.406] and proc["image_std"] == [0.229, 0.224, 0.225]
    card = (out / "README.md").read_text()
    assert "base_model: conservationxlabs/miewid-msv3" in card and result.source_sha256 in card

    # the pipeline loads the folder with AutoModel.from_pretrained(..., trust_remote_code=True)
    extractor = pipeline("image-feature-extraction", model=str(out), trust_remote_code=True)
    model = extractor.model
    assert type(model).__name__ == "AnimalReIDModel" and "transformers_modules" in type(model).__module__
    assert not model.training

    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = model(pixel_values=x)
    ref = reference(x)
    assert got.features.shape == (4, DIM)
    assert (got.features - ref).abs().max() <= 1e-4 * ref.abs().max()  # MiewID's raw output
    ref_n = F.normalize(ref, dim=-1)
    assert (got.embeddings - ref_n).abs().max() <= 1e-5
    _assert_same_ranking(got.embeddings, ref_n)

    images = _images(4)
    emb = torch.tensor(
        np.array([np.asarray(extractor(im)).reshape(-1) for im in images]), dtype=torch.float32
    )
    # the reference preprocessing: squash resize, bilinear without antialias, ImageNet normalisation
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    ref = []
    for im in images:  # one at a time, as the pipeline runs
        t = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float()[None]
        t = F.interpolate(t, size=(SIZE, SIZE), mode="bilinear", align_corners=False, antialias=False)
        ref.append(reference((t.clamp(0, 255).round() / 255.0 - mean) / std))
    ref = F.normalize(torch.cat(ref), dim=-1)
    assert (emb - ref).abs().max() <= 1e-5
    _assert_same_ranking(emb, ref)


def test_older_bin_with_arcface_head_and_scalar_p(miewid_state, tmp_path):
    from animal_reid.convert.miewid import read_miewid_state

    old = dict(miewid_state)
    old["pooling.p"] = torch.tensor(P)  # 0-d
    old["final.weight"] = torch.randn(30, DIM)  # sub-center ArcFace head
    old["final.margins"] = torch.full((10,), 0.3)
    torch.save({"state_dict": old, "epoch": 12}, tmp_path / "miewid.bin")
    state, dropped = read_miewid_state(tmp_path / "miewid.bin")
    assert dropped == ["final.margins", "final.weight"]
    assert state["pooling.p"].shape == (1,) and float(state["pooling.p"]) == pytest.approx(P)
    assert len(state) == 1208
    assert all(torch.equal(state[k], miewid_state[k]) for k in miewid_state if k != "pooling.p")


def test_missing_backbone_tensors_are_named(miewid_state):
    state = {k: v for k, v in miewid_state.items() if not k.startswith("backbone.blocks.5.")}
    with pytest.raises(CheckpointError, match=r"missing, e\.g\. backbone\.blocks\.5\.0\.conv_pw\.weight"):
        validate_miewid_state(state, "partial.safetensors")


def test_wrong_shapes_are_named(miewid_state):
    state = dict(miewid_state)
    state["bn.weight"] = torch.ones(512)
    state["bn.bias"] = torch.zeros(512)
    with pytest.raises(
        CheckpointError,
        match=r"2 with the wrong shape, e\.g\. bn\.weight: checkpoint \(512,\), expected \(2152,\)",
    ):
        validate_miewid_state(state, "wrong.safetensors")


def test_unexpected_tensors_are_named(miewid_state):
    state = dict(miewid_state)
    state["neck.extra.weight"] = torch.ones(3)
    with pytest.raises(CheckpointError, match=r"1 unexpected, e\.g\. neck\.extra\.weight"):
        validate_miewid_state(state, "extra.safetensors")


def test_nan_weights_are_refused(miewid_state):
    state = dict(miewid_state)
    state["bn.running_var"] = torch.full((DIM,), float("nan"))
    with pytest.raises(CheckpointError, match="NaN or infinity, e.g. bn.running_var"):
        validate_miewid_state(state, "nan.safetensors")


def test_megadescriptor_file_given_to_miewid_converter(tmp_path):
    swin = timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        num_classes=0,
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
    )
    src = tmp_path / "src"  # the output may not lie inside the source folder
    src.mkdir()
    torch.save(swin.state_dict(), src / "pytorch_model.bin")
    with pytest.raises(
        CheckpointError, match=r"1208 expected\): 1208 missing.*timm Swin checkpoint \(MegaDescriptor\)"
    ):
        convert_miewid(src, tmp_path / "out", verify=False)
    (src / "config.json").write_text(
        json.dumps(
            {"architecture": "swin_tiny_patch4_window7_224", "pretrained_cfg": {"input_size": [3, 224, 224]}}
        )
    )
    with pytest.raises(CheckpointError, match="is a timm model config"):
        convert_miewid(src, tmp_path / "out", verify=False)
    assert not (tmp_path / "out").exists()  # a refused conversion leaves no output folder


def test_truncated_safetensors_is_refused(tmp_path):
    save_file({"pooling.p": torch.tensor([3.0]), "bn.weight": torch.ones(DIM)}, tmp_path / "full.safetensors")
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model.safetensors: truncated or corrupt safetensors file \("):
        convert_miewid(tmp_path / "model.safetensors", tmp_path / "out", verify=False)


def test_cli_exit_code_and_message(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "model.safetensors").write_bytes(b"")
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path / "src"), str(tmp_path / "out")])
    assert info.value.code == 2 and "file is empty" in capsys.readouterr().err


@pytest.mark.realdata
def test_bilinear_noaa_is_within_one_grey_level_of_opencv(data_root):
    """MiewID's evaluation resized with OpenCV INTER_LINEAR; the converted processor must reproduce it."""
    cv2 = pytest.importorskip("cv2")
    from PIL import Image

    paths = sorted((data_root / "wildlife_reidentification-main" / "Nyala_Data_Zero").rglob("*.jpg"))[::150][
        :8
    ]
    paths += sorted((data_root / "DogFaceNet" / "after_4_bis").rglob("*.jpg"))[::1000][:4]
    assert len(paths) >= 10
    proc = miewid_processor()
    worst = 0
    for path in paths:
        image = Image.open(path).convert("RGB")
        ours = (proc.resize(image) * 255.0).round().to(torch.int16).permute(1, 2, 0).numpy()
        ref = cv2.resize(np.asarray(image), (440, 440), interpolation=cv2.INTER_LINEAR).astype(np.int16)
        diff = np.abs(ours - ref)
        worst = max(worst, int(diff.max()))
        assert diff.mean() < 0.2, (path, float(diff.mean()))  # about 1 value in 8 is off by one
    assert worst <= 1


def test_converted_miewid_is_explained_with_lrp(converted):
    """PAIR-X on a converted MiewID (EfficientNetV2-M, random weights: the published ones cannot be downloaded):
    a convolutional backbone, so relevance is LRP through zennit, read at a stage of at least 14 x 14 cells."""
    pytest.importorskip("zennit")
    from transformers import AutoImageProcessor, AutoModel

    from animal_reid.explain import default_method, explain_pair, stage_grids
    from animal_reid.explain.features import default_stage

    out, _ = converted
    model = AutoModel.from_pretrained(out, trust_remote_code=True).eval()
    processor = AutoImageProcessor.from_pretrained(out, trust_remote_code=True)
    assert default_method(model) == "lrp"
    assert stage_grids(model)[default_stage(model)] == (
        24,
        24,
    )  # at 96 px: blocks.1, the deepest of >= 14 cells
    a, b = _images(2)
    found = explain_pair(model, processor, a, b, top=6)
    assert found.method == "lrp" and len(found.xy_b) == 6
    assert bool(((found.xy_b >= 0) & (found.xy_b <= [b.width, b.height])).all())
    assert 0.0 <= found.scores.coverage <= 1.0 and 0.0 <= found.scores.residual <= 1.0
