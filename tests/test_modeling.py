"""The Hub-native model: build, save/reload, pipeline, head maths, gradients, weights, isolation."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoModel, pipeline

from modeling import (
    AnimalReIDConfig,
    AnimalReIDForMetricLearning,
    AnimalReIDImageProcessor,
    AnimalReIDModel,
    SubCenterArcFaceHead,
    dynamic_margins,
)

REPO = Path(__file__).resolve().parents[1]


def _image(seed: int = 0, size=(96, 80)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


BACKBONES = {
    "efficientnet_lite0": dict(backbone="efficientnet_lite0", image_size=64, embedding_dim=128),
    "efficientnetv2_rw_m": dict(backbone="efficientnetv2_rw_m", image_size=64, embedding_dim=0),
    "swin": dict(
        backbone="swin_tiny_patch4_window7_224",
        backbone_kwargs={"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]},
        pooling="gem",
        image_size=224,
        embedding_dim=32,
    ),
    "vit": dict(
        backbone="vit_tiny_patch16_224",
        backbone_kwargs={"img_size": 64, "depth": 2},
        pooling="backbone",
        image_size=64,
        embedding_dim=32,
    ),
}


@pytest.mark.parametrize("name", list(BACKBONES))
def test_save_reload_bit_identical(tmp_path, name):
    torch.manual_seed(0)
    cfg = AnimalReIDConfig(**BACKBONES[name])
    model = AnimalReIDModel(cfg).eval()
    h, w = cfg.image_size
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        ref = model(pixel_values=x)
    assert ref.embeddings.shape == (2, model.embedding_dim)
    assert torch.allclose(ref.embeddings.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert ref.pooler_output is ref.embeddings
    if name == "efficientnetv2_rw_m":
        assert model.backbone_num_features == 2152  # the paper's embedding width
        return  # build and forward only: too heavy to round-trip in the fast suite
    model.save_pretrained(tmp_path)
    AnimalReIDImageProcessor.from_model_config(cfg).save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    assert {"modeling_animal_reid.py", "configuration_animal_reid.py", "image_processing_animal_reid.py"} <= {
        p.name for p in tmp_path.iterdir()
    }
    loaded = AutoModel.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert type(loaded).__name__ == "AnimalReIDModel"
    sd0, sd1 = model.state_dict(), loaded.state_dict()
    assert sd0.keys() == sd1.keys()
    for k in sd0:
        assert torch.equal(sd0[k], sd1[k]), k
    with torch.no_grad():
        again = loaded(pixel_values=x)
    assert torch.equal(again.embeddings, ref.embeddings)


def test_pipeline_matches_model_and_processor(tmp_path):
    cfg = AnimalReIDConfig(backbone="test_efficientnet", embedding_dim=32, image_size=64)
    model = AnimalReIDModel(cfg).eval()
    proc = AnimalReIDImageProcessor(size=64)
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    img = _image(1)
    pipe = pipeline("image-feature-extraction", model=str(tmp_path), trust_remote_code=True)
    got = pipe(img, return_tensors=True)
    with torch.no_grad():
        want = model(**proc(img, return_tensors="pt")).embeddings
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-6)
    # pool=True returns the same vector (pooler_output)
    assert torch.allclose(pipe(img, return_tensors=True, pool=True), want, atol=1e-6)
    # encode() gives the same rows
    enc = model.encode([img, img], batch_size=2)
    assert np.allclose(enc, want.numpy().repeat(2, 0), atol=1e-6)


def _slow_subcenter_arcface(emb, weight, labels, k, margins, scale):
    """Per sample, per class, per sub-center reference in float64 with math.acos."""
    B, D = emb.shape
    C = weight.shape[0] // k
    logits = np.zeros((B, C))
    for i in range(B):
        e = emb[i] / np.linalg.norm(emb[i])
        for c in range(C):
            best = -2.0
            for j in range(k):
                w = weight[c * k + j] / np.linalg.norm(weight[c * k + j])
                best = max(best, float(e @ w))
            if labels is not None and c == labels[i]:
                m = margins[c]
                theta = math.acos(min(1.0, max(-1.0, best)))
                if theta + m < math.pi:
                    best = math.cos(theta + m)
                else:
                    best = best - math.sin(math.pi - m) * m
            logits[i, c] = best * scale
    if labels is None:
        return logits, None
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return logits, -np.mean(logp[np.arange(B), labels])


@pytest.mark.parametrize("k", [1, 3])
def test_subcenter_arcface_matches_slow_reference(k):
    torch.manual_seed(0)
    C, D, B = 7, 16, 12
    head = SubCenterArcFaceHead(D, C, subcenters=k, scale=30.0)
    head.margins_rad.copy_(dynamic_margins(np.arange(1, C + 1) ** 2, 0.05, 0.5))
    emb = torch.randn(B, D)
    labels = torch.randint(0, C, (B,))
    # force a few near-opposite pairs so the theta + m > pi fallback is exercised
    emb[0] = -head.weight[labels[0] * k].detach() * 3
    logits = head(emb, labels)
    loss = F.cross_entropy(logits, labels)
    ref_logits, ref_loss = _slow_subcenter_arcface(
        emb.double().numpy(),
        head.weight.detach().double().numpy(),
        labels.numpy(),
        k,
        head.margins_rad.double().numpy(),
        30.0,
    )
    assert np.allclose(logits.detach().numpy() / 30.0, ref_logits / 30.0, atol=1e-5)
    assert abs(loss.item() - ref_loss) < 1e-5 * max(1.0, abs(ref_loss))
    # without labels: scaled cosines
    assert np.allclose(
        head(emb).detach().numpy() / 30.0,
        _slow_subcenter_arcface(
            emb.double().numpy(), head.weight.detach().double().numpy(), None, k, None, 30.0
        )[0]
        / 30.0,
        atol=1e-5,
    )


def test_k1_equals_plain_arcface():
    """insightface's ArcMarginProduct (easy_margin=False), written independently."""
    torch.manual_seed(1)
    C, D, B, m, s = 5, 8, 10, 0.5, 64.0
    head = SubCenterArcFaceHead(D, C, subcenters=1, scale=s, margin_rad=m)
    emb, labels = torch.randn(B, D), torch.randint(0, C, (B,))
    cosine = F.linear(F.normalize(emb), F.normalize(head.weight))
    sine = torch.sqrt((1.0 - cosine.pow(2)).clamp(0, 1))
    phi = cosine * math.cos(m) - sine * math.sin(m)
    phi = torch.where(cosine > math.cos(math.pi - m), phi, cosine - math.sin(math.pi - m) * m)
    one_hot = F.one_hot(labels, C).float()
    ref = (one_hot * phi + (1.0 - one_hot) * cosine) * s
    assert torch.allclose(head(emb, labels), ref, atol=1e-4)


def test_dynamic_margins_hand_worked():
    # counts 1, 16, 81 -> t = n^-1/4 = 1, 1/2, 1/3; min 1/3, max 1
    # m = 0.05 + (t - 1/3) / (2/3) * 0.45 -> 0.5, 0.05 + 0.25 * 0.45 = 0.1625, 0.05
    m = dynamic_margins([1, 16, 81], 0.05, 0.5)
    assert torch.allclose(m, torch.tensor([0.5, 0.1625, 0.05]), atol=1e-7)
    assert torch.allclose(dynamic_margins([4, 4], 0.1, 0.3), torch.tensor([0.3, 0.3]))
    with pytest.raises(ValueError, match="at least one training image"):
        dynamic_margins([0, 3], 0.05, 0.5)


def _train_model(**head):
    cfg = AnimalReIDConfig(
        backbone="test_efficientnet", embedding_dim=16, image_size=32, head={"num_classes": 4, **head}
    )
    return AnimalReIDForMetricLearning(cfg)


def test_margins_set_from_counts_and_saved(tmp_path):
    model = _train_model(margin_min_rad=0.05, margin_max_rad=0.5)
    margins = model.set_margins_from_counts([1, 16, 81, 16])
    assert torch.allclose(margins, torch.tensor([0.5, 0.1625, 0.05, 0.1625]))
    model.save_pretrained(tmp_path)
    back = AnimalReIDForMetricLearning.from_pretrained(tmp_path)
    assert torch.equal(back.head.margins_rad, model.head.margins_rad)
    fixed = _train_model(margin_mode="fixed", margin_rad=0.3, subcenters=1)
    assert torch.allclose(fixed.set_margins_from_counts([1, 2, 3, 4]), torch.full((4,), 0.3))


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = _train_model().train()
    model.set_margins_from_counts([3, 5, 7, 9])
    # 64 px: a 2x2 feature map. At 32 px the map is 1x1, where GeM is the identity whatever p, so p's gradient
    # is zero up to rounding and its sign depended on the thread count (issue 13).
    out = model(pixel_values=torch.randn(8, 3, 64, 64), labels=torch.tensor([0, 1, 2, 3] * 2))
    assert out.loss is not None and torch.isfinite(out.loss)
    out.loss.backward()
    missing = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)
    ]
    assert not missing, missing
    assert model.pooling.p.grad is not None  # GeM p is learned


def test_head_fp32_under_autocast():
    model = _train_model().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(pixel_values=torch.randn(4, 3, 32, 32), labels=torch.tensor([0, 1, 2, 3]))
    assert out.logits.dtype == torch.float32 and out.loss.dtype == torch.float32


def test_output_type_same_in_train_and_eval():
    model = _train_model()
    x = torch.randn(4, 3, 32, 32)
    t = type(model.train()(pixel_values=x, labels=torch.arange(4)))
    e = type(model.eval()(pixel_values=x))
    assert t is e


def test_export_feature_extractor(tmp_path):
    model = _train_model().eval()
    fe = model.export_feature_extractor()
    assert isinstance(fe, AnimalReIDModel) and fe.config.head is None
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fe(pixel_values=x).embeddings, model(pixel_values=x).embeddings)
    fe.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["head"] is None and cfg["architectures"] == ["AnimalReIDModel"]
    assert cfg["auto_map"]["AutoModel"] == "modeling_animal_reid.AnimalReIDModel"
    from safetensors import safe_open

    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert not [k for k in f.keys() if k.startswith("head.")]


def test_finetune_head_from_exported_extractor(tmp_path):
    model = _train_model().eval()
    model.export_feature_extractor().save_pretrained(tmp_path)
    ft = AnimalReIDForMetricLearning.from_pretrained(tmp_path, head={"num_classes": 9, "subcenters": 2})
    assert ft.head.weight.shape == (18, 16) and torch.isfinite(ft.head.weight).all()
    assert torch.equal(ft.backbone.conv_stem.weight, model.backbone.conv_stem.weight)


def test_config_validation_messages():
    with pytest.raises(ValueError, match="gem_p must be > 0, got 0.0"):
        AnimalReIDConfig(gem_p=0.0)
    with pytest.raises(ValueError, match="pooling must be one of"):
        AnimalReIDConfig(pooling="mean")
    with pytest.raises(ValueError, match="pretrained=True"):
        AnimalReIDConfig(backbone_kwargs={"pretrained": True})
    with pytest.raises(ValueError, match="head.num_classes"):
        AnimalReIDConfig(head={"num_classes": 0})
    with pytest.raises(ValueError, match="unknown head option"):
        AnimalReIDConfig(head={"num_classes": 3, "margin": 0.5})
    with pytest.raises(ValueError, match="needs config.head"):
        AnimalReIDForMetricLearning(AnimalReIDConfig(backbone="test_efficientnet"))


def test_gem_on_tokens_is_refused():
    cfg = AnimalReIDConfig(
        backbone="vit_tiny_patch16_224", backbone_kwargs={"img_size": 32, "depth": 1}, image_size=32
    )
    with pytest.raises(ValueError, match="pooling='backbone'"):
        AnimalReIDModel(cfg)(pixel_values=torch.randn(1, 3, 32, 32))


# numpy and PIL come with transformers/timm (required by their image utilities); nothing else is allowed at
# module level. onnxruntime is optional: imported only inside functions (encode(engine="onnxruntime")), and only
# after checking that it is installed.
ALLOWED_TOP = {"torch", "timm", "transformers", "numpy", "PIL"}
OPTIONAL_LAZY = {"onnxruntime"}


def test_modeling_imports_nothing_else():
    stdlib = set(__import__("sys").stdlib_module_names)

    def imported(node):
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        if isinstance(node, ast.ImportFrom) and node.level == 0:  # level > 0: relative, inside modeling/
            return [node.module]
        return []

    for path in (REPO / "modeling").glob("*.py"):
        tree = ast.parse(path.read_text())
        lazy = {
            id(inner)
            for fn in ast.walk(tree)
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
            for inner in ast.walk(fn)
        }
        for node in ast.walk(tree):
            for name in imported(node):
                top = name.split(".")[0]
                allowed = stdlib | ALLOWED_TOP | (OPTIONAL_LAZY if id(node) in lazy else set())
                assert top in allowed, f"{path.name} imports {name}"


def test_lite0_weights_checksum_and_mapping():
    from animal_reid.weights import LITE_PACKAGES, lite_state_dict, lite_weights_path, sha256_file

    for name in LITE_PACKAGES:
        assert sha256_file(lite_weights_path(name)) == LITE_PACKAGES[name][3]
    sd = lite_state_dict("efficientnet_lite0")
    assert len(sd) == 247 and sd["classifier.weight"].shape == (1000, 1280)


def test_load_imagenet_backbone_into_model():
    from animal_reid.weights import lite_state_dict, load_imagenet_backbone

    model = AnimalReIDModel(AnimalReIDConfig(backbone="efficientnet_lite0", image_size=64))
    load_imagenet_backbone(model)
    ref = lite_state_dict("efficientnet_lite0")
    assert torch.equal(model.backbone.conv_stem.weight, ref["conv_stem.weight"])
    assert torch.equal(model.backbone.bn2.running_var, ref["bn2.running_var"])


@pytest.mark.realdata
def test_lite0_classifies_real_lion_portraits(data_root):
    import timm

    from animal_reid.weights import LITE_MEAN, LITE_STD, lite_state_dict

    files = sorted((data_root / "wildlife_reidentification-main" / "Lion_Data_Zero").glob("*/*/*ortrait*"))[
        :8
    ]
    assert files, "no lion portraits found"
    net = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    net.load_state_dict(lite_state_dict("efficientnet_lite0"))
    proc = AnimalReIDImageProcessor(size=224, resample="bicubic", image_mean=LITE_MEAN, image_std=LITE_STD)
    with torch.no_grad():
        probs = net(proc([str(f) for f in files])["pixel_values"]).softmax(-1)
    assert (probs.argmax(-1) == 291).float().mean() >= 0.75  # ImageNet class 291 = lion


def test_test_time_flip_averages_the_two_unit_views_and_reloads(tmp_path):
    torch.manual_seed(0)
    plain = AnimalReIDModel(
        AnimalReIDConfig(backbone="test_efficientnet", embedding_dim=16, image_size=64)
    ).eval()
    flip = AnimalReIDModel(AnimalReIDConfig(backbone="test_efficientnet", embedding_dim=16, image_size=64,
                                            test_time_flip=True)).eval()  # fmt: skip
    flip.load_state_dict(plain.state_dict())
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = plain(pixel_values=x).embeddings, plain(pixel_values=torch.flip(x, dims=[-1])).embeddings
        want = torch.nn.functional.normalize(a + b, dim=-1)
        got = flip(pixel_values=x).embeddings
        assert torch.allclose(got, want, atol=1e-6) and not torch.allclose(got, a, atol=1e-3)
        # a mirror image gets the same embedding
        assert torch.allclose(flip(pixel_values=torch.flip(x, dims=[-1])).embeddings, got, atol=1e-5)
        # training mode sees one view (the flag is for inference)
        assert torch.allclose(flip.train()(pixel_values=x).features, plain.train()(pixel_values=x).features)
    flip.eval().save_pretrained(tmp_path)
    back = AutoModel.from_pretrained(tmp_path, trust_remote_code=True)
    assert back.config.test_time_flip is True
    img = _image(2, size=(64, 64))
    assert np.allclose(back.encode([img], engine="torch"), flip.encode([img], engine="torch"), atol=1e-6)
    with pytest.raises(ValueError, match="test_time_flip"):
        AnimalReIDConfig(test_time_flip="yes")
