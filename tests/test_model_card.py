"""The model card template rendered from a run's facts, without training anything."""

import pytest
from huggingface_hub import ModelCard

from animal_reid.training.config import parse_config
from animal_reid.training.model_card import corpus_sources, eval_results, render_model_card
from modeling import AnimalReIDConfig

CORPUS_CARD_TEXT = """# Multispecies animal re-identification corpus

## Sources

| source | species | licence | version | reported images / identities | read |
|---|---|---|---|---|---|
| [LionData](https://github.com/tvanzyl/wildlife_reidentification) | lion | none stated | d58c9b5 | 740 / 94 | 740 / 94 |
| [FaroPig](https://github.com/yudong888/FaroPig-Datasets) | pig | research use only | 2733341 | ? / ? | 215 / 43 |

## Citation

**LionData**

```bibtex
@inproceedings{dlamini2020lions, title={Automated identification of individuals in wildlife population using siamese neural networks}}
```

**FaroPig**

```bibtex
@misc{faropig, title={FaroPig}}
```
"""

RESULTS = {
    "best_epoch": 2,
    "metric_for_best": "top1",
    "test_protocol": "leave_one_out",
    "num_processes": 1,
    "wall_time_s": 123.0,
    "train_images_per_s": 20.5,
    "test": {
        "top1": 0.5,
        "top5": 0.75,
        "mAP": 0.4,
        "n_queries": 30,
        "per_species": {
            "lion": {"top1": 0.6, "top5": 0.8, "mAP": 0.45, "n_queries": 20},
            "pig": {"top1": 0.4, "top5": 0.7, "mAP": 0.35, "n_queries": 10},
        },
    },
    "val_best": {"top1": 0.55, "top5": 0.7, "mAP": 0.5, "n_queries": 12, "per_species": {}},
}

HISTORY = [
    {"epoch": 1, "train_loss": 12.0, "images_per_s": 20.0, "val": {"top1": 0.5, "mAP": 0.4}},
    {"epoch": 2, "train_loss": 10.5, "images_per_s": 21.0, "val": {"top1": 0.55, "mAP": 0.5}},
]


def test_sources_are_read_from_the_corpus_card():
    info = {
        "dataset_card_text": CORPUS_CARD_TEXT,
        "build_report": {"sources": {"LionData": {"images": 740, "identities": 94}}},
    }
    sources = corpus_sources(info)
    assert [s["name"] for s in sources] == ["LionData", "FaroPig"]
    lion = sources[0]
    assert lion["license"] == "none stated" and lion["url"].startswith("https://github.com/tvanzyl")
    assert lion["citation"].startswith("@inproceedings{dlamini2020lions")
    assert (lion["images"], lion["identities"]) == ("740", "94")
    assert sources[1]["license"] == "research use only" and sources[1]["images"] == "?"


def test_eval_results_per_species_and_average():
    results = eval_results(RESULTS, "real6", "leave_one_out")
    got = {(r.dataset_config, r.metric_type): r.metric_value for r in results}
    assert got == {
        ("lion", "top1_accuracy"): 60.0,
        ("lion", "map"): 45.0,
        ("pig", "top1_accuracy"): 40.0,
        ("pig", "map"): 35.0,
        ("all", "top1_accuracy"): 50.0,
        ("all", "map"): 40.0,
    }
    assert all(r.dataset_split == "test" and r.task_type == "image-feature-extraction" for r in results)


def test_rendered_card_round_trips(tmp_path):
    config = parse_config(
        ["--corpus", "corpus/real", "--push_to_hub", "me/reid-lite0", "--model_license", "cc-by-nc-4.0"]
    )
    model_config = AnimalReIDConfig(backbone="efficientnet_lite0", embedding_dim=0, image_size=128)
    start = {"top1": 0.2, "top5": 0.5, "mAP": 0.15, "per_species": {"lion": {"top1": 0.3, "mAP": 0.25}}}
    results = {**RESULTS, "baseline": {"test": start, "val": start}, "beats_baseline": True}
    card = render_model_card(
        config=config,
        model_config=model_config,
        results=results,
        history=HISTORY,
        corpus_info={"corpus": "real", "dataset_card_text": CORPUS_CARD_TEXT},
        train_counts={"images": 800, "identities": 120},
        num_parameters=3_400_000,
        widget=[{"src": "https://example.org/lion.jpg", "example_title": "lion"}],
    )
    path = tmp_path / "README.md"
    card.save(path)
    loaded = ModelCard.load(path)
    data = loaded.data
    assert data.pipeline_tag == "image-feature-extraction" and data.library_name == "transformers"
    assert data.license == "cc-by-nc-4.0" and data.datasets == ["real"]
    assert data.model_name == "reid-lite0"
    assert data.widget == [{"src": "https://example.org/lion.jpg", "example_title": "lion"}]
    assert {"species:lion", "species:pig", "animal-reid"} <= set(data.tags)
    assert len(data.eval_results) == 6
    text = loaded.text
    assert 'AutoModel.from_pretrained("me/reid-lite0", trust_remote_code=True)' in text
    # trained vs start (the run's own baseline), per species and averaged
    assert "| lion | 30.0 → **60.0** | 80.0 | 25.0 → **45.0** | 20 |" in text
    assert "| **average over species** | 20.0 → **50.0** | 75.0 | 15.0 → **40.0** | 30 |" in text
    assert "did not beat its starting point" not in text
    assert "no projection, no BNNeck" not in text and "gem pooling, no projection, BatchNorm (BNNeck)" in text
    assert "research use only" in text and "@inproceedings{dlamini2020lions" in text
    # the weights carry the most restrictive source terms: LionData states none (no licence to redistribute)
    binding = "most restrictive of their terms:\n**no licence for redistribution (ask the authors)** (the terms of LionData)"
    assert binding in text.replace(" \n", "\n")
    assert "`efficientnet_lite0`" in text and "3.4M parameters" in text
    assert "128x128 pixels" in text and "horizontal flip off" in text
    assert "procedurally generated" not in text  # real species: no synthetic disclaimer


def test_missing_template_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="model card template"):
        render_model_card(
            config=parse_config([]),
            model_config=AnimalReIDConfig(),
            results=RESULTS,
            history=HISTORY,
            corpus_info={},
            train_counts={},
            num_parameters=1,
            template_path=tmp_path / "nope.md",
        )


def test_card_says_loudly_when_training_did_not_beat_its_start(tmp_path):
    config = parse_config(["--corpus", "corpus/real"])
    card = render_model_card(
        config=config,
        model_config=AnimalReIDConfig(
            backbone="efficientnet_lite0", embedding_dim=0, pooling="avg", neck_bn=False
        ),
        results={
            **RESULTS,
            "baseline": {"test": RESULTS["test"], "val": RESULTS["test"]},
            "beats_baseline": False,
        },
        history=HISTORY,
        corpus_info={"corpus": "real", "dataset_card_text": CORPUS_CARD_TEXT},
        train_counts={"images": 800, "identities": 120},
        num_parameters=3_400_000,
    )
    assert "Training did not beat its starting point on validation" in card.text
    assert "avg pooling, no projection, no BNNeck" in card.text


@pytest.mark.parametrize(
    "licences, binding, names",
    [
        (["MIT", "CC BY 4.0"], "attribution", ["b"]),
        (["MIT", "research use only", "CC BY-SA 4.0"], "research / non-commercial use only", ["b"]),
        (["CC BY-NC-SA 4.0", "competition data: research use only, no redistribution"], "no licence", ["b"]),
        (
            ["unknown (none stated by the source)", "no redistribution without permission"],
            "no licence",
            ["a", "b"],
        ),
        (
            ["Apache-2.0", "CDLA-Permissive-1.0 (Community Data License Agreement, permissive variant)"],
            "permissive",
            ["a", "b"],
        ),
    ],
)
def test_weights_carry_the_most_restrictive_licence(licences, binding, names):
    from animal_reid.training.licences import most_restrictive

    words, which = most_restrictive([{"name": "abc"[i], "license": t} for i, t in enumerate(licences)])
    assert words.startswith(binding) and which == names
