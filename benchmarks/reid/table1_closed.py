"""Table 1 of the real-photo benchmarks: the closed set on MegaDescriptor's splits. Our arms (and their variants,
refits, a multispecies start, test-time flip) against a plain ArcFace head, the peer recipe, the backbone's
features alone and the published MegaDescriptor figures; test images query train + validation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.reid.config import PUBLISHED_MEGADESCRIPTOR, BenchConfig, floor_label
from benchmarks.reid.harness import Bench
from benchmarks.reid.runs import pick, run_summary, train_counts, without_spec


def table1(bench: Bench) -> dict[str, Any]:
    """Closed set (MegaDescriptor's protocol): ours vs plain ArcFace vs ImageNet features vs published."""
    c, corpus = bench.cfg, bench.corpora["closed"]
    specs, peers, start = _table1_arms(bench, corpus)
    missing = [a for a in c.closed_flip_tta if f"t1_{a}" not in {*specs, *(p[0] for p in peers)}]
    if missing:
        raise ValueError(f"closed_flip_tta {missing}: not arms this config trains ({sorted(specs)})")
    if c.closed_parallel_runs > 1:
        bench.train_parallel(corpus, specs, peers=peers, at_once=c.closed_parallel_runs)
    runs = {name: bench.train(name, corpus, **over) for name, over in specs.items()}
    runs |= {name: bench.peer(name, corpus, images, batch, splits) for name, images, batch, splits in peers}
    flips = {f"ours, {a}, + test-time flip (same weights)": runs[f"t1_{a}"] for a in c.closed_flip_tta}
    runs = _table1_labelled(c, runs)
    models = {floor_label(c): "imagenet"} | {k: v["export_dir"] for k, v in runs.items()}
    models |= {label: str(flip_export(Path(run["export_dir"]))) for label, run in flips.items()}
    rows, curves = _closed_rows(bench, corpus, models)
    # a refit trained on the validation images (and labels), so it has no validation to report
    flip_val = {
        label: _closed_validation(bench, corpus, models[label])
        for label, run in flips.items()
        if "--train_on_validation" not in (run.get("argv") or [])
    }
    species = sorted(next(iter(rows.values()))["megadescriptor"])
    return {
        "protocol": "test images query train+validation (= MegaDescriptor's training set), 1-NN cosine; "
        "'megadescriptor' keeps same-encounter gallery images as MegaDescriptor does, 'strict' drops them",
        "species": species,
        "rows": rows,
        "published": PUBLISHED_MEGADESCRIPTOR,
        "runs": {k: run_summary(v) for k, v in runs.items()},
        "multispecies_start": run_summary(start) if start else None,
        "test_time_flip_validation": flip_val,
        "_curves": curves,
    }


def flip_export(export: Path) -> Path:
    """A copy of ``export`` beside it (``<export>_test_time_flip``) whose config has ``test_time_flip: true``."""
    import shutil
    import tempfile

    dst = export.parent / f"{export.name}_test_time_flip"
    if (dst / "config.json").is_file():
        return dst
    tmp = Path(tempfile.mkdtemp(prefix=".flip-", dir=export.parent))
    try:
        shutil.copytree(export, tmp, dirs_exist_ok=True)
        cfg = json.loads((tmp / "config.json").read_text())
        (tmp / "config.json").write_text(json.dumps({**cfg, "test_time_flip": True}, indent=2))
        tmp.rename(dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def _closed_validation(bench: Bench, corpus: Path, which: str) -> dict[str, Any]:
    """Per species ``{top1, mAP}``: validation images query the train split (the runs' `query_gallery`)."""
    from animal_reid.metrics import evaluate_reid

    q, qm = bench.embed(which, corpus, "validation", capped=False)
    g, gm = bench.embed(which, corpus, "train", capped=False)
    r = evaluate_reid(q, qm["identity"], None, qm["species"], gallery_embeddings=g, gallery_labels=gm["identity"],
                      gallery_species=gm["species"], topk=(1,))  # fmt: skip
    return {sp: {"top1": m["top1"], "mAP": m["mAP"]} for sp, m in r["per_species"].items()}


def _table1_arms(bench: Bench, corpus: Path) -> tuple[dict[str, dict], list[tuple], dict[str, Any] | None]:
    """Table 1's runs, limited to ``closed_arms``: training overrides of our arms, the peer runs ``(name, images,
    batch, splits)``, and the multispecies start's results (trained here when an arm needs it, else None)."""
    c = bench.cfg
    common = {
        "eval_protocol": c.closed_eval_protocol,
        "epochs": c.closed_epochs,
        "batches_per_epoch": c.closed_batches_per_epoch,
        "max_images_per_identity": None,  # the benchmark's exact database
        "max_eval_images_per_identity": None,
    }
    arcface = {"subcenters": 1, "dynamic_margins": False, "margin_max": c.megadescriptor_margin,
               "margin_min": c.megadescriptor_margin, "scale": c.megadescriptor_scale, "head_init": "normal"}  # fmt: skip
    images, batch = _closed_images(bench, corpus, common)
    refit = {"train_on_validation": True, "batches_per_epoch": images // batch // common["epochs"]}
    specs = {"t1_ours": common} | ({"t1_arcface": {**common, **arcface}} if c.closed_plain_arcface else {})
    specs |= {f"t1_{name}": {**common, **over} for name, over in c.closed_variants.items()}
    peers = [("t1_peer", images, batch, ("train",))]
    if c.closed_refit:  # the same schedule and image count, drawn from train + validation
        specs["t1_ours_refit"] = {**common, **refit}
        peers.append(("t1_peer_refit", images, batch, ("train", "validation")))
    keep = None if c.closed_arms is None else {f"t1_{a}" for a in c.closed_arms}
    _check_arms(c, keep, set(specs) | {name for name, *_ in peers})
    start = None
    if c.closed_pretrain and (keep is None or keep & {"t1_multi", "t1_multi_refit"}):
        start = _closed_pretrain(bench)
        specs["t1_multi"] = {**common, **c.closed_finetune, "init_from": start["export_dir"]}
        if c.closed_refit:
            specs["t1_multi_refit"] = {**specs["t1_multi"], **refit}
    if keep is not None:
        specs = {k: v for k, v in specs.items() if k in keep}
        peers = [p for p in peers if p[0] in keep]
    return specs, peers, start


def _check_arms(c: BenchConfig, keep: set[str] | None, names: set[str]) -> None:
    """``closed_arms`` must name arms this config has (a typo would otherwise train and score nothing)."""
    if c.closed_pretrain:
        names = names | {"t1_multi"} | ({"t1_multi_refit"} if c.closed_refit else set())
    unknown = sorted(keep - names) if keep else []
    if unknown:
        has = sorted(n[3:] for n in names)
        raise ValueError(f"closed_arms {[u[3:] for u in unknown]}: not arms of this config, which has {has}")


def _table1_labelled(c: BenchConfig, runs: dict[str, dict]) -> dict[str, dict]:
    """Table 1's runs keyed by their row label, in row order."""
    tuned = _overrides(c.closed_finetune)
    labels = {
        "t1_ours": f"ours ({_recipe_label(runs['t1_ours'])})" if "t1_ours" in runs else "",
        "t1_arcface": f"ours with a plain ArcFace head (k=1, m={c.megadescriptor_margin}, "
        f"s={c.megadescriptor_scale:g}, N(0, 0.01) init)",
    }
    labels |= {f"t1_{name}": f"ours, {name}{_overrides(over)}" for name, over in c.closed_variants.items()}
    labels |= {
        "t1_peer": "peer recipe (plain-ArcFace script, issue 12)",
        "t1_multi": f"ours, fine-tuned from the multispecies start{tuned}",
        "t1_ours_refit": "ours, refit on train + validation (the same schedule, last epoch)",
        "t1_peer_refit": "peer recipe, refit on train + validation",
        "t1_multi_refit": f"ours from the multispecies start{tuned}, refit on train + validation",
    }
    return {label: runs[name] for name, label in labels.items() if name in runs}


def _overrides(over: dict[str, Any]) -> str:
    return f" ({', '.join(f'{k}={v}' for k, v in over.items())})" if over else ""


def _closed_pretrain(bench: Bench) -> dict[str, Any]:
    """The multispecies start of table 1's `multi` arms: the open corpus without the closed corpus's species."""
    c = bench.cfg
    closed = set(bench.split(bench.corpora["closed"], "train", capped=False)["species"])
    counts = train_counts(bench, bench.corpora["open"])
    over = without_spec(c, counts, *closed)
    if not over["species"]:
        raise ValueError(
            f"closed_pretrain: the open corpus has no species beyond the closed corpus's {sorted(closed)}"
        )
    over |= {"eval_protocol": "leave_one_out", "eval_every": 2, "warmup_epochs": 0.1 * c.epochs}
    return bench.train("t1_pretrain", bench.corpora["open"], **over)


def _closed_rows(bench: Bench, corpus: Path, models: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each model's test queries against train + validation, with and without same-encounter gallery images."""
    from animal_reid.metrics import evaluate_reid

    rows: dict[str, Any] = {}
    curves = {}
    for label, which in models.items():
        q, qm = bench.embed(which, corpus, "test", capped=False)
        g1, gm1 = bench.embed(which, corpus, "train", capped=False)
        g2, gm2 = bench.embed(which, corpus, "validation", capped=False)
        g = np.concatenate([g1, g2])
        gm = {k: gm1[k] + gm2[k] for k in gm1}
        per: dict[str, Any] = {}
        for protocol, enc in (("megadescriptor", False), ("strict", True)):
            r = evaluate_reid(
                q,
                qm["identity"],
                qm["encounter"] if enc else None,
                qm["species"],
                gallery_embeddings=g,
                gallery_labels=gm["identity"],
                gallery_encounters=gm["encounter"] if enc else None,
                gallery_species=gm["species"],
                topk=(1, 5),
            )
            per[protocol] = {sp: pick(r, sp) for sp in r["per_species"]}
            if protocol == "megadescriptor":
                curves[label] = r
        rows[label] = per
    return rows, curves


def _closed_images(bench: Bench, corpus: Path, common: dict[str, Any]) -> tuple[int, int]:
    """``(training images, batch size)`` of a table-1 run: epochs x batches per epoch x batch (default: one pass)."""
    from animal_reid.training.config import parse_config

    cfg = parse_config(bench.train_argv("t1_ours", corpus, **common)).train
    rows = len(bench.split(corpus, "train", capped=False))
    batches = cfg.batches_per_epoch or max(1, rows // cfg.batch_size)
    return cfg.epochs * batches * cfg.batch_size, cfg.batch_size


def _recipe_label(res: dict[str, Any]) -> str:
    """Short description of a run's head and optimiser from its resolved config (``config_summary``)."""
    h = res.get("config_summary") or {}
    if not h:
        return "our recipe"
    head = f"sub-center ArcFace k={h['subcenters']}" if h["subcenters"] > 1 else "ArcFace"
    margins = (
        f"dynamic margins {h['margin_min']:g}-{h['margin_max']:g}"
        if h["dynamic_margins"]
        else f"m={h['margin_max']:g}"
    )
    return (
        f"{head}, {margins}, s={h['scale']:g}, {h['pooling']}, head init {h['head_init']}, {h['optimizer']}"
    )
