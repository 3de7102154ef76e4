"""The training recipe's parts (issue 12): random batches, light augmentation, class-mean head initialisation,
BNNeck calibration, the run's own baseline, optimiser choice and validation every N epochs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_train_loop import tiny_args

import train_accelerate
from animal_reid.training.augment import ReIDAugment
from animal_reid.training.config import parse_config
from animal_reid.training.evaluation import resolve_protocol
from animal_reid.training.model import build_optimizer, class_centers, init_head
from animal_reid.training.sampler import RandomBatchSampler
from modeling import AnimalReIDConfig, AnimalReIDForMetricLearning
from modeling.modeling_animal_reid import SubCenterArcFaceHead


def test_random_batches_visit_every_row_once_per_pass_and_shard_disjointly():
    s = RandomBatchSampler(50, 8, seed=3)
    s.set_epoch(1)
    batches = list(s)
    assert len(batches) == 6 and all(len(b) == 8 for b in batches)
    flat = [i for b in batches for i in b]
    assert len(set(flat)) == len(flat)  # 48 of 50 rows, none twice within a pass
    again = RandomBatchSampler(50, 8, seed=3)
    again.set_epoch(1)
    assert list(again) == batches
    s.set_epoch(2)
    assert list(s) != batches
    ranks = [RandomBatchSampler(50, 8, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(1)
    assert [b for pair in zip(*map(list, ranks), strict=True) for b in pair] == batches
    more = RandomBatchSampler(10, 4, seed=0, batches_per_epoch=5)  # more than one pass
    assert len(list(more)) == 5
    with pytest.raises(ValueError, match="batch_size"):
        RandomBatchSampler(10, 0)


def test_light_augmentation_shifts_and_brightens_only():
    aug = ReIDAugment.light([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    x = torch.randint(0, 256, (3, 64, 48), dtype=torch.uint8)
    out = aug(x, torch.Generator().manual_seed(1))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert torch.equal(out, aug(x, torch.Generator().manual_seed(1)))
    flat = torch.full((3, 64, 48), 100, dtype=torch.uint8)  # a shift of a flat image is the same flat image
    y = aug(flat, torch.Generator().manual_seed(2))
    assert y.unique().numel() == 1 and 80 <= int(y[0, 0, 0]) <= 120


def test_class_centers_start_each_class_at_its_mean():
    head = SubCenterArcFaceHead(16, num_classes=5, subcenters=3)
    centers = torch.randn(5, 16)
    centers[4] = 0  # a class without images keeps its weights
    before = head.weight.data[12:15].clone()
    head.set_class_centers(centers, row_norm=0.4, seed=0)
    norms = head.weight.data.norm(dim=1)
    torch.testing.assert_close(norms[:12], torch.full((12,), 0.4))
    assert torch.equal(head.weight.data[12:15], before)
    cos = head.cosine(centers[:4])
    assert cos[:, :4].argmax(dim=1).tolist() == [0, 1, 2, 3] and cos[:, :4].diagonal().min() > 0.99
    with pytest.raises(ValueError, match="centers must be"):
        head.set_class_centers(torch.randn(4, 16), row_norm=1.0)


def test_mean_init_makes_the_untrained_head_classify_its_training_images():
    cfg = AnimalReIDConfig(backbone="test_efficientnet", embedding_dim=0, image_size=32, head={"num_classes": 4})
    model = AnimalReIDForMetricLearning(cfg).eval()
    emb = np.random.default_rng(0).normal(size=(12, model.embedding_dim)).astype(np.float32)
    ids = [f"id{i % 4}" for i in range(12)]
    label_of = {f"id{i}": i for i in range(4)}
    for mode, expected in (("mean", 1.0), ("normal", None)):
        centers = class_centers(emb, ids, label_of, 4)
        init_head(model, mode, centers, seed=0)
        pred = model.head.cosine(torch.from_numpy(emb)).argmax(dim=1).numpy()
        acc = float(np.mean(pred == [label_of[i] for i in ids]))
        if expected is not None:
            assert acc == expected
    torch.testing.assert_close(model.head.weight.std().item(), 0.01, atol=2e-3, rtol=0)


@pytest.fixture(scope="module")
def mean_run(tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("recipe") / "run"
    args = tiny_args(tiny_corpus, out, "--epochs", "3", "--eval_every", "2", "--head_init", "mean")
    return out, train_accelerate.main(args)


def test_results_hold_the_starting_point_with_the_same_keys(mean_run):
    out, res = mean_run
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["baseline"]) == {"val", "test"}
    assert set(saved["baseline"]["val"]) == set(saved["val_best"]) and set(saved["baseline"]["test"]) == set(saved["test"])
    assert set(saved["baseline"]["test"]["per_species"]) == set(saved["test"]["per_species"])
    assert saved["beats_baseline"] == (saved["val_best"]["top1"] > saved["baseline"]["val"]["top1"])
    assert saved["train_images_seen"] == 3 * 3 * 8 and saved["config_summary"]["head_init"] == "mean"
    log = (out / "train.log").read_text()
    assert "starting point (no training yet)" in log and "(start -> trained" in log
    card = (out / "export" / "README.md").read_text()
    assert "→ **" in card


def test_validation_every_n_epochs_and_after_the_last(mean_run):
    out, res = mean_run
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    scored = [h["epoch"] for h in history if h["val"]["top1"] is not None]
    assert scored == [2, 3] and res["best_epoch"] in (2, 3)


def test_neck_calibration_sets_running_statistics_from_the_train_images(tiny_corpus, tmp_path):
    out = tmp_path / "neck"
    args = tiny_args(tiny_corpus, out, "--epochs", "1", "--embedding_dim", "0", "--neck_bn", "true")
    res = train_accelerate.main(args + ["--lr_backbone", "0", "--lr_head", "0"])
    from safetensors.torch import load_file

    weights = load_file(str(out / "export" / "model.safetensors"))
    # calibrated (then updated in train mode by the one epoch): far from the identity start (mean 0, var 1)
    assert weights["neck_bn.running_mean"].abs().max() > 0.01
    assert res["baseline"]["val"]["top1"] is not None


def test_optimiser_choice():
    model = torch.nn.Linear(3, 3)
    model.backbone = torch.nn.Linear(3, 3)
    sgd = build_optimizer(model, parse_config(["--optimizer", "sgd"]))
    adamw = build_optimizer(model, parse_config(["--optimizer", "adamw"]))
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.9
    assert isinstance(adamw, torch.optim.AdamW)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        parse_config(["--optimizer", "lion"])


def test_auto_protocol_scores_closed_set_validation_against_train():
    label_of = {"a": 0, "b": 1}
    assert resolve_protocol(["a", "b", "a"], label_of) == "query_gallery"
    assert resolve_protocol(["a", "c"], label_of) == "leave_one_out"
    assert resolve_protocol([], label_of) == "leave_one_out"
