#!/usr/bin/env python
"""What makes zero-shot generalise, judged on held-out species' VALIDATION identities (issue 34): post-training
arms of the leave-one-species-out models of `benchmarks/reid_real.py` (table 3), with no new training.

    python benchmarks/ablate_zeroshot.py --config benchmarks/configs/bench_real8_224.yaml --out runs/bench_real8 \\
        --held-out cattle lion --alphas 0.25 0.5 0.75 --apply humpback cattle lion \\
        --results benchmarks/results/ablate_zeroshot_real8

For each species X of ``--held-out`` the model trained without X (``<out>/runs/t3_without_X/export``) is scored
leave-one-out on X's validation identities, never its test, in these arms:
- ``trained``: the model as table 3 scores it;
- ``wise a``: WiSE-FT toward the start, the backbone's weights (BatchNorm statistics included)
  ``(1 - a) * start + a * trained``, the start being the floor's backbone (the config's ``init_weights``, ImageNet
  here), the trained neck kept (its start was random: nothing to go back to);
- ``no neck``: the trained backbone's pooled features, the projection and neck BatchNorm dropped (only for a
  model that has them);
- ``imagenet``: the backbone's ImageNet features (table 3's floor), for reference;
- ``NAME`` of ``--arms NAME=WORK_DIR``: a training change, the model trained without X by another reid_real call
  (the same config plus the change in ``train_overrides``, its own ``--out``, the same ``--corpora``).

The arm with the best mean validation top-1 over the held-out species (then mAP; ``trained`` wins ties) is
chosen, and only then, with ``--apply``, scored on the test identities of the table-3 species whose model exists,
beside the trained model and the ImageNet floor: a report of a choice already made, not a second choice.
``--seen-model`` (table 2's multispecies export) applies a chosen post-training arm to a model that saw every
species and scores both on every species' validation: what the zero-shot choice costs where the model is used on
the species it was trained on.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import report  # noqa: E402
from benchmarks.reid.config import load_bench_config  # noqa: E402
from benchmarks.reid.harness import Bench, Deadline  # noqa: E402
from benchmarks.reid.runner import machine, restore_datasets_cache, use_private_datasets_cache  # noqa: E402

logger = logging.getLogger("ablate_zeroshot")


def export_of(work: Path, species: str) -> Path:
    """The table-3 model trained without ``species``; a one-line error when it was not trained."""
    export = work / "runs" / f"t3_without_{species}" / "export"
    if not (export / "config.json").is_file():
        raise FileNotFoundError(
            f"{export}: no model trained without {species!r}; run benchmarks/reid_real.py with tables=[3] and "
            f"zero_shot_species=[{species}] on this --out first"
        )
    return export


def wise_backbone(model, start_backbone: dict, alpha: float):
    """A copy of ``model`` whose backbone is ``(1 - alpha) * start + alpha * trained``; the neck as trained."""
    from animal_reid.training.interpolate import interpolate_state

    trained = model.state_dict()
    start = dict(trained)
    start.update({f"backbone.{k}": v for k, v in start_backbone.items()})
    out = copy.deepcopy(model)
    out.load_state_dict(interpolate_state(start, trained, alpha))
    return out


def has_neck(model) -> bool:
    """Whether the embedding has a projection or a neck BatchNorm after pooling."""
    return model.config.embedding_dim > 0 or bool(model.config.neck_bn)


def without_neck(model):
    """The trained backbone and pooling under a config with no projection and no neck BatchNorm."""
    from modeling import AnimalReIDModel

    cfg = copy.deepcopy(model.config)
    cfg.embedding_dim, cfg.neck_bn = 0, False
    out = AnimalReIDModel(cfg)
    missing, unexpected = out.load_state_dict(model.state_dict(), strict=False)
    if missing:
        raise RuntimeError(f"no-neck model: weights missing after load: {missing[:5]}")
    return out


def register_arms(
    bench: Bench, work: Path, species: str, alphas: list[float], trained_arms: dict[str, Path]
) -> list[str]:
    """Register every arm of the model trained without ``species`` with ``bench`` (names under its export);
    ``trained_arms``: more arms, each the model trained without ``species`` in another work directory (a recipe
    change). Returns the arm names, ``trained`` first, ``imagenet`` last."""
    from modeling import AnimalReIDImageProcessor, AnimalReIDModel

    export = export_of(work, species)
    model = AnimalReIDModel.from_pretrained(str(export)).eval()
    processor = AnimalReIDImageProcessor.from_pretrained(str(export))
    names = {"trained": model}
    if has_neck(model):  # a recipe with no projection and no neck BatchNorm has nothing to drop
        names["no neck"] = without_neck(model)
    start = bench.extractor("imagenet")[0].backbone.state_dict()  # the weights every run started from
    names.update({f"wise {a:g}": wise_backbone(model, start, a) for a in alphas})
    for name, other in trained_arms.items():
        names[name] = AnimalReIDModel.from_pretrained(str(export_of(other, species))).eval()
    for name, variant in names.items():
        bench.register(f"{export}::{name}", variant, processor)
    return list(names) + ["imagenet"]


def parse_arm(text: str) -> tuple[str, Path]:
    """``NAME=WORK_DIR`` of ``--arms``."""
    name, sep, work = text.partition("=")
    if not sep or not name or not work:
        raise ValueError(
            f"--arms {text!r}: expected NAME=WORK_DIR (a reid_real --out with t3_without_* runs)"
        )
    return name, Path(work)


def score(bench: Bench, export: Path, arm: str, species: str, split: str) -> dict[str, Any]:
    """One arm's leave-one-out top-1 / mAP / queries on ``species``' ``split``."""
    which = "imagenet" if arm == "imagenet" else f"{export}::{arm}"
    res = bench.leave_one_out(which, bench.corpora["open"], [species], split=split)
    ps = res["per_species"][species]
    return {"top1": ps["top1"], "mAP": ps["mAP"], "n_queries": ps["n_queries"]}


def choose(val: dict[str, dict[str, dict[str, Any]]], arms: list[str]) -> tuple[str, dict[str, tuple]]:
    """The arm with the best mean validation (top-1, mAP) over the held-out species; ``trained`` wins ties."""
    means = {}
    for arm in arms:
        rows = [val[sp][arm] for sp in val]
        means[arm] = tuple(sum(r[k] for r in rows) / len(rows) for k in ("top1", "mAP"))
    candidates = [a for a in arms if a != "imagenet"]
    best = max(candidates, key=lambda a: (means[a], a == "trained"))
    return best, means


def pct(m: dict[str, Any]) -> str:
    return f"{100 * m['top1']:.1f} / {100 * m['mAP']:.1f}"


def render(res: dict[str, Any]) -> str:
    """The results page: validation per arm and species, the choice, then the test report of the choice."""
    held, arms = list(res["validation"]), res["arms"]
    cols = ["arm"] + [f"{sp} ({res['validation'][sp]['trained']['n_queries']} q)" for sp in held] + ["mean"]
    rows = [
        [arm + (" (chosen)" if arm == res["chosen"] else "")]
        + [pct(res["validation"][sp][arm]) for sp in held]
        + ["{:.1f} / {:.1f}".format(*(100 * v for v in res["mean"][arm]))]
        for arm in arms
    ]
    out = [
        "# Zero-shot ablation on held-out species' validation identities (top-1 / mAP %)",
        "",
        f"- date: {res['date']}; machine: {res['machine']}; wall time {res['wall_s']:.0f} s",
        f"- command: `{res['command']}`",
        "",
        report.markdown_table(cols, rows),
    ]
    if res.get("test"):
        out += [
            "",
            f"## Test identities of the table-3 species: the chosen arm ({res['chosen']}) beside table 3",
            "",
        ]
        cols = ["held-out species", "test queries", "ImageNet features", "trained (table 3)", res["chosen"]]
        rows = [
            [sp, t["trained"]["n_queries"], pct(t["imagenet"]), pct(t["trained"]), pct(t[res["chosen"]])]
            for sp, t in res["test"].items()
        ]
        out.append(report.markdown_table(cols, rows))
    return "\n".join(out + render_seen(res.get("seen")))


def render_seen(seen: dict[str, Any] | None) -> list[str]:
    """The chosen arm on the species the multispecies model saw (validation), beside it as trained."""
    if not seen:
        return []
    v, arm = seen["validation"], seen["arm"]
    rows = [[sp, m["n_queries"], pct(m), pct(v[arm][sp])] for sp, m in v["trained"].items()]
    mean = lambda d: "{:.1f} / {:.1f}".format(  # noqa: E731
        *(100 * sum(m[k] for m in d.values()) / len(d) for k in ("top1", "mAP"))
    )
    rows.append(["mean", "", mean(v["trained"]), mean(v[arm])])
    return [
        "",
        f"## The choice on seen species: `{seen['model']}` as trained and with {arm} (validation)",
        "",
        report.markdown_table(["species", "validation queries", "trained", arm], rows),
    ]


def post_training_arm(model, start_backbone: dict, arm: str):
    """``arm`` (``wise A`` or ``no neck``) applied to ``model``; None for an arm that needs its own training."""
    if arm.startswith("wise "):
        return wise_backbone(model, start_backbone, float(arm.split()[1]))
    if arm == "no neck":
        return without_neck(model)
    return None


def seen_cost(bench: Bench, export: Path, arm: str) -> dict[str, Any] | None:
    """The chosen arm applied to a model that saw every species, beside that model as trained, on every species'
    validation (leave-one-out per species): the price of the zero-shot choice on seen species. None when the
    chosen arm is a training change or the trained model itself (nothing to apply)."""
    from modeling import AnimalReIDImageProcessor, AnimalReIDModel

    model = AnimalReIDModel.from_pretrained(str(export)).eval()
    start = bench.extractor("imagenet")[0].backbone.state_dict()
    variant = post_training_arm(model, start, arm)
    if variant is None:
        return None
    processor = AnimalReIDImageProcessor.from_pretrained(str(export))
    out = {}
    for name, m in (("trained", model), (arm, variant)):
        bench.register(f"{export}::{name}", m, processor)
        res = bench.leave_one_out(f"{export}::{name}", bench.corpora["open"], None, split="validation")
        out[name] = {
            sp: {"top1": ps["top1"], "mAP": ps["mAP"], "n_queries": ps["n_queries"]}
            for sp, ps in sorted(res["per_species"].items())
            if ps.get("top1") is not None  # a species with no scorable query (pig: one clip each) is left out
        }
    return {"model": str(export), "arm": arm, "validation": out}


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    cfg = load_bench_config(args.config, args.set)
    work = Path(args.out)
    corpus = Path(args.corpora) / "open" if args.corpora else work / "corpora" / "open"
    bench = Bench(cfg=cfg, work=work, corpora={"open": corpus}, deadline=Deadline(None))
    t0, val = time.time(), {}
    trained_arms = dict(parse_arm(a) for a in args.arms)
    for sp in args.held_out:
        arms = register_arms(bench, work, sp, args.alphas, trained_arms)
        val[sp] = {arm: score(bench, export_of(work, sp), arm, sp, "validation") for arm in arms}
        logger.info("%s validation: %s", sp, {a: pct(m) for a, m in val[sp].items()})
    chosen, means = choose(val, arms)
    test = {}
    for sp in args.apply:
        try:
            register_arms(
                bench, work, sp, args.alphas, {chosen: trained_arms[chosen]} if chosen in trained_arms else {}
            )
        except FileNotFoundError as err:
            logger.warning("--apply %s: skipped: %s", sp, err)
            continue
        test[sp] = {
            arm: score(bench, export_of(work, sp), arm, sp, "test") for arm in ("imagenet", "trained", chosen)
        }
    seen = seen_cost(bench, Path(args.seen_model), chosen) if args.seen_model else None
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t0)),
        "machine": machine(),
        "command": command,
        "arms": arms,
        "validation": val,
        "mean": means,
        "chosen": chosen,
        "test": test,
        "seen": seen,
        "wall_s": time.time() - t0,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="the BenchConfig YAML the table-3 runs were trained with")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, as reid_real")
    p.add_argument(
        "--out", required=True, help="reid_real's work directory (corpora/open, runs/t3_without_*)"
    )
    p.add_argument("--corpora", default=None, help="reid_real's --corpora, if that call was given one")
    p.add_argument("--held-out", nargs="+", required=True, help="species whose validation identities choose")
    p.add_argument(
        "--alphas", nargs="*", type=float, default=[0.25, 0.5, 0.75], help="WiSE-FT backbone alphas"
    )
    p.add_argument(
        "--arms",
        nargs="*",
        default=[],
        metavar="NAME=WORK_DIR",
        help="trained arms: the table-3 runs of another reid_real --out (the same config with one training change)",
    )
    p.add_argument("--apply", nargs="*", default=[], help="table-3 species to score the chosen arm on (test)")
    p.add_argument(
        "--seen-model",
        default=None,
        help="an export trained on every species (table 2's multispecies model): the chosen post-training arm "
        "applied to it, scored on every species' validation beside it as trained (what the choice costs on "
        "species the model saw)",
    )
    p.add_argument("--results", default=None, help="results stem (.json and .md)")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    args = p.parse_args(argv)
    if any(not 0.0 <= a < 1.0 for a in args.alphas):
        p.error(f"--alphas must lie in [0, 1) (1 is the trained arm), got {args.alphas}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    command = "python benchmarks/ablate_zeroshot.py " + " ".join(argv if argv is not None else sys.argv[1:])
    previous = use_private_datasets_cache(Path(args.out))
    try:
        res = run(args, command)
    finally:
        restore_datasets_cache(previous)
    page = render(res)
    print(page)
    if args.results:
        report.write_results(Path(args.results).with_suffix(".json"), res, page, newline=True)
    return res


if __name__ == "__main__":
    main()
