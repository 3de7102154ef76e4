"""benchmarks/ablate_zeroshot.py: post-training arms of the leave-one-species-out models, chosen on validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from benchmarks import ablate_zeroshot, reid_real
from modeling import AnimalReIDConfig, AnimalReIDModel

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "benchmarks" / "configs" / "bench_smoke.yaml"


def _model(seed: int) -> AnimalReIDModel:
    torch.manual_seed(seed)
    return AnimalReIDModel(
        AnimalReIDConfig(backbone="test_efficientnet", embedding_dim=8, image_size=32)
    ).eval()


def test_wise_backbone_moves_only_the_backbone_toward_the_start():
    trained, start = _model(0), _model(1)
    start_bb = start.backbone.state_dict()
    half = ablate_zeroshot.wise_backbone(trained, start_bb, 0.5)
    at_start = ablate_zeroshot.wise_backbone(trained, start_bb, 0.0)
    for k, v in trained.backbone.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(half.backbone.state_dict()[k], (v + start_bb[k]) / 2, atol=1e-6), k
            assert torch.equal(at_start.backbone.state_dict()[k], start_bb[k]), k
    assert torch.equal(half.projection.weight, trained.projection.weight)  # the neck is kept as trained
    assert torch.equal(trained.backbone.state_dict()["conv_stem.weight"], _model(0).backbone.conv_stem.weight)


def test_without_neck_gives_the_trained_backbones_pooled_features():
    trained = _model(0)
    bare = ablate_zeroshot.without_neck(trained).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        got = bare(pixel_values=x).embeddings
        pooled = trained.pooling(trained.backbone.forward_features(x))
    assert got.shape[1] == trained.backbone.num_features
    assert torch.allclose(got, F.normalize(pooled, dim=-1), atol=1e-5)


def test_a_model_without_projection_or_neck_batchnorm_has_no_neck_arm():
    torch.manual_seed(0)
    bare = AnimalReIDModel(
        AnimalReIDConfig(backbone="test_efficientnet", embedding_dim=0, neck_bn=False, image_size=32)
    )
    assert ablate_zeroshot.has_neck(_model(0)) and not ablate_zeroshot.has_neck(bare)


def test_choose_keeps_trained_on_a_tie_and_never_picks_the_floor():
    m = lambda t, a: {"top1": t, "mAP": a, "n_queries": 10}  # noqa: E731
    val = {
        "a": {"trained": m(0.5, 0.3), "wise 0.5": m(0.6, 0.3), "imagenet": m(0.9, 0.9)},
        "b": {"trained": m(0.5, 0.3), "wise 0.5": m(0.4, 0.3), "imagenet": m(0.9, 0.9)},
    }
    chosen, means = ablate_zeroshot.choose(val, ["trained", "wise 0.5", "imagenet"])
    assert chosen == "trained" and means["wise 0.5"] == pytest.approx((0.5, 0.3))


@pytest.fixture(scope="module")
def table3_work(tmp_path_factory, bench_synthetic_corpus) -> tuple[Path, Path]:
    """A table-3 call on a compacted synthetic corpus: the model trained without synth_stripes."""
    tmp = tmp_path_factory.mktemp("ablate")
    corpora = tmp / "corpora"  # open only: tables 2-5 need no closed corpus
    reid_real.compact_corpus(bench_synthetic_corpus, corpora / "open", size=32, seed=0)
    argv = ["--config", str(SMOKE), "--corpora", str(corpora)]
    res = reid_real.main(
        argv + ["--out", str(tmp / "work"), "--results", str(tmp / "t3"), "--set", "tables=[3]"]
    )
    assert res["skipped"] == []
    # one training change, its own work directory on the same corpora: the arm `--arms slow=...` reads
    sets = ["tables=[3]", "train_overrides={lr_backbone: 1.0e-5, lr_head: 1.0e-5}"]
    reid_real.main(argv + ["--out", str(tmp / "slow"), "--results", str(tmp / "t3_slow"), "--set", *sets])
    config = (tmp / "slow" / "runs" / "t3_without_synth_stripes" / "config.yaml").read_text()
    assert "lr_backbone: 1.0e-05" in config
    return tmp, corpora


def test_ablation_scores_validation_then_reports_the_choice_on_test_as_table3_does(table3_work):
    tmp, corpora = table3_work
    results = tmp / "ablate"
    argv = ["--config", str(SMOKE), "--out", str(tmp / "work"), "--corpora", str(corpora)]
    argv += ["--held-out", "synth_stripes", "--alphas", "0", "0.5", "--apply", "synth_stripes", "synth_spots"]
    argv += ["--arms", f"slow={tmp / 'slow'}"]
    res = ablate_zeroshot.main(argv + ["--results", str(results)])
    assert res["arms"] == ["trained", "no neck", "wise 0", "wise 0.5", "slow", "imagenet"]
    val = res["validation"]["synth_stripes"]
    assert len({m["n_queries"] for m in val.values()}) == 1 and val["trained"]["n_queries"] > 0
    assert res["chosen"] != "imagenet"
    assert res["mean"][res["chosen"]] == max(v for a, v in res["mean"].items() if a != "imagenet")
    # the test report is table 3's figure for the trained model, and skips a species with no model
    table3 = json.loads((tmp / "t3.json").read_text())["tables"]["3"]["rows"]["synth_stripes"]
    test = res["test"]["synth_stripes"]
    assert test["trained"]["top1"] == pytest.approx(table3["zero_shot"]["top1"])
    # (the smoke config's floor is a randomly initialised backbone, init_weights none: not comparable across calls)
    assert test["imagenet"]["n_queries"] == table3["imagenet"]["n_queries"]
    assert set(res["test"]) == {"synth_stripes"}
    page = results.with_suffix(".md").read_text()
    assert "(chosen)" in page and "Test identities" in page


def test_a_species_without_a_table3_model_is_named(table3_work, capsys):
    tmp, corpora = table3_work
    argv = ["--config", str(SMOKE), "--out", str(tmp / "work"), "--corpora", str(corpora)]
    with pytest.raises(
        FileNotFoundError, match="t3_without_synth_spots.*no model trained without 'synth_spots'"
    ):
        ablate_zeroshot.main(argv + ["--held-out", "synth_spots"])


def test_seen_cost_scores_the_chosen_arm_on_every_species_beside_the_model_as_trained(table3_work):
    from benchmarks.reid.config import load_bench_config
    from benchmarks.reid.harness import Bench, Deadline

    tmp, corpora = table3_work
    bench = Bench(
        cfg=load_bench_config(str(SMOKE), []),
        work=tmp / "work",
        corpora={"open": corpora / "open"},
        deadline=Deadline(None),
    )
    export = ablate_zeroshot.export_of(tmp / "work", "synth_stripes")
    assert ablate_zeroshot.seen_cost(bench, export, "slow") is None  # a training change: nothing to apply
    seen = ablate_zeroshot.seen_cost(bench, export, "wise 0.5")
    val = seen["validation"]
    assert set(val) == {"trained", "wise 0.5"} and set(val["trained"]) == set(val["wise 0.5"])
    assert {"synth_stripes", "synth_spots"} <= set(val["trained"])  # every species, the held-out one included
    # "trained" is the export on disk as it is
    on_disk = bench.leave_one_out(str(export), corpora / "open", None, split="validation")["per_species"]
    for sp, m in val["trained"].items():
        assert m["top1"] == pytest.approx(on_disk[sp]["top1"]) and m["n_queries"] == on_disk[sp]["n_queries"]
    page = "\n".join(ablate_zeroshot.render_seen(seen))
    assert "with wise 0.5" in page and "| mean |" in page
