"""Orchestration of the real-photo benchmarks (benchmarks/reid_real.py), the GPU pack and bench_train, on tiny
synthetic corpora: the figures mean nothing, the plumbing is what is checked."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import reid_real
from benchmarks.reid.report import lr_grid_lines
from benchmarks.reid.table4_finetune import finetune

REPO = Path(__file__).resolve().parents[1]

SMOKE = REPO / "benchmarks" / "configs" / "bench_smoke.yaml"


@pytest.fixture(scope="module")
def tiny_corpus(bench_synthetic_corpus) -> Path:
    return bench_synthetic_corpus


def _load(path: Path, tmp_path: Path):
    import datasets

    return datasets.load_dataset(str(path), "all", cache_dir=str(tmp_path / "hf_cache"))


def test_compact_corpus_shrinks_images_and_keeps_layout(tiny_corpus, tmp_path):
    dst = tmp_path / "small"
    report = reid_real.compact_corpus(
        tiny_corpus,
        dst,
        size=16,
        quality=80,
        max_identities={"synth_spots": 10},
        max_images_per_identity=3,
        seed=1,
    )
    dd = _load(dst, tmp_path)
    src = _load(tiny_corpus, tmp_path)
    spots = {s: [r for r in dd[s] if r["species"] == "synth_spots"] for s in dd}
    assert sum(len({r["identity"] for r in rows}) for rows in spots.values()) == 10
    for split in dd:
        ids = dd[split]["identity"]
        assert max(ids.count(i) for i in set(ids)) <= 3
        assert set(dd[split]["image_id"]) <= set(src[split]["image_id"])  # same rows, same split
        got = report["species"]
        assert len(ids) == sum(got[sp][split]["images"] for sp in got if split in got[sp])
    img = dd["train"][0]["image"]
    assert max(img.size) <= 16 and img.format == "JPEG"
    assert dd["train"].features["image"].__class__.__name__ == "Image"  # schema metadata survived
    # compacting a compacted corpus keeps the bytes (no second JPEG generation)
    import pyarrow.parquet as pq

    reid_real.compact_corpus(dst, tmp_path / "again", size=16, seed=1)
    for f in sorted((dst / "data").glob("*/*.parquet")):
        a = pq.read_table(f, columns=["image"]).column("image").to_pylist()
        b = (
            pq.read_table(tmp_path / "again" / f.relative_to(dst), columns=["image"])
            .column("image")
            .to_pylist()
        )
        assert [x["bytes"] for x in a] == [x["bytes"] for x in b]


def test_compact_corpus_few_training_identities(tiny_corpus, tmp_path):
    dst = tmp_path / "few"
    reid_real.compact_corpus(
        tiny_corpus, dst, size=24, species=["synth_stripes"], max_train_identities=4, seed=0
    )
    dd = _load(dst, tmp_path)
    src = _load(tiny_corpus, tmp_path)
    assert set(dd["train"]["species"]) == {"synth_stripes"}
    assert len(set(dd["train"]["identity"])) == 4
    src_test = [
        i
        for i, s in zip(src["test"]["identity"], src["test"]["species"], strict=True)
        if s == "synth_stripes"
    ]
    assert sorted(dd["test"]["identity"]) == sorted(src_test)  # evaluation splits untouched
    from huggingface_hub import DatasetCard

    names = {c["config_name"] for c in DatasetCard.load(dst / "README.md").data.configs}
    assert names == {"all", "synth_stripes"}  # configs of dropped species removed from the card
    with pytest.raises(ValueError, match="not in corpus"):
        reid_real.compact_corpus(tiny_corpus, tmp_path / "x", size=24, species=["lion"])


def test_open_set_queries_masks_same_encounter_and_marks_unknown():
    # species a: identities x (2 images, one encounter) and y, z (2 images, two encounters each), w
    ident = ["a:x", "a:x", "a:y", "a:y", "a:z", "a:z", "a:w", "a:w"]
    enc = ["x1", "x1", "y1", "y2", "z1", "z2", "w1", "w2"]
    rng = np.random.default_rng(0)
    centers = {i: rng.normal(size=8) for i in set(ident)}
    emb = np.stack([centers[i] + 0.01 * rng.normal(size=8) for i in ident])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    meta = {"identity": ident, "encounter": enc, "species": ["a"] * 8}
    q = reid_real.open_set_queries(emb, meta, unknown_fraction=0.25, seed=3)
    unknown = q["unknown"].astype(bool)
    assert unknown.sum() == 2  # one unknown identity, both its images query
    assert len(set(q["true"][unknown])) == 1
    known = ~unknown
    # a known query whose only same-identity gallery image shares its encounter is dropped, not matched
    kept = set(q["true"][known])
    if "a:x" not in kept:
        assert int(q["dropped"]) >= 1
    assert (
        q["best_label"][known] == q["true"][known]
    ).all()  # well-separated clusters: every known query right
    assert not set(q["best_label"][unknown]) & set(q["true"][unknown])


def test_load_bench_config_overrides_and_errors(tmp_path):
    cfg = reid_real.load_bench_config(SMOKE, ["epochs=3", "tables=[1, 5]", "max_identities={dog: 2}"])
    assert cfg.epochs == 3 and cfg.tables == [1, 5] and cfg.max_identities == {"dog": 2}
    with pytest.raises(ValueError, match="unknown benchmark option"):
        reid_real.load_bench_config(SMOKE, ["epoch=3"])
    with pytest.raises(ValueError, match="tables must be among"):
        reid_real.load_bench_config(SMOKE, ["tables=[7]"])


def test_deadline_stops_new_runs(tmp_path):
    bench = reid_real.Bench(
        cfg=reid_real.load_bench_config(SMOKE), work=tmp_path, corpora={}, deadline=reid_real.Deadline(0.0)
    )
    with pytest.raises(reid_real.OutOfTime):
        bench.train("never", tmp_path / "no_corpus")
    assert not (tmp_path / "runs" / "never").exists()


def test_smoke_table5_end_to_end_and_reuse(tiny_corpus, tmp_path):
    """Table 5 on a compacted synthetic corpus: one training run, open-set figures, JSON/MD/plot written, and a
    second call reusing the finished run."""
    corpora = tmp_path / "corpora"
    reid_real.compact_corpus(tiny_corpus, corpora / "open", size=32, seed=0)
    shutil.copytree(corpora / "open", corpora / "closed")  # present, unused by table 5
    results = tmp_path / "res" / "smoke"
    argv = ["--config", str(SMOKE), "--corpora", str(corpora), "--out", str(tmp_path / "work")]
    argv += ["--results", str(results), "--set", "tables=[5]", "openset_unknown_fraction=0.5"]
    res = reid_real.main(argv)
    assert res["skipped"] == []
    t5 = res["tables"]["5"]
    assert set(t5["rows"]) == {"multispecies", reid_real.floor_label(reid_real.load_bench_config(SMOKE))}
    for rep in t5["rows"].values():
        assert 0.0 <= rep["BAKS"] <= 1.0 and 0.0 <= rep["BAUS"] <= 1.0
        assert rep["n_queries"]["test"] > 0
        # two calibrations scored on validation; the better one (a tie keeps the fitted one) is reported
        cal = rep["calibration"]
        val = cal["validation_geometric_mean"]
        assert set(val) == set(cal["test_geometric_mean"]) == {"validation queries", "gallery"}
        assert val[cal["chosen"]] == max(val.values())
        assert cal["chosen"] == "gallery" or val["validation queries"] >= val["gallery"]
        assert rep["geometric_mean"] == cal["test_geometric_mean"][cal["chosen"]]
    assert set(res["run_times_s"]) == {"t2_multi"}
    saved = json.loads(results.with_suffix(".json").read_text())
    assert saved["tables"].keys() == {"5"}
    page = results.with_suffix(".md").read_text()
    assert "## 5. Open set" in page
    for sp in t5["rows"]["multispecies"]["per_species"]:  # the per-species grid of sqrt(BAKS·BAUS)
        assert f"\n| {sp} | " in page.split("Per species on test")[1]
    assert (results.parent / "smoke_table5_openset_scores.png").is_file()
    again = reid_real.main(argv)
    assert again["run_times_s"] == {}  # the finished run was reused, not trained again
    assert again["tables"]["5"]["rows"]["multispecies"]["BAKS"] == t5["rows"]["multispecies"]["BAKS"]


@pytest.mark.slow
def test_smoke_all_tables_and_gpu_script_on_cpu(tmp_path):
    """The whole GPU script in its CPU rehearsal mode: pack (synthetic), bench_embed, bench_train, tables 1-5."""
    pack = tmp_path / "pack"
    subprocess.run(
        [
            sys.executable,
            "benchmarks/gpu/pack.py",
            "--smoke",
            "--out",
            str(pack),
            "--work",
            str(tmp_path / "src"),
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    out = tmp_path / "out"
    env = {
        **os.environ,
        "OUT": str(out),
        "PACK": str(pack),
        "BENCH_WORK": str(tmp_path / "w"),
        "BENCH_BUDGET_S": "1500",
        # run.sh calls python3: this interpreter's, whether or not its virtual environment is activated
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    proc = subprocess.run(
        ["bash", "benchmarks/gpu/run.sh", "--smoke"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8
    assert {
        "env.txt",
        "bench_train_gpu.json",
        "reid_real_gpu.json",
        "reid_real_gpu.md",
        "extras.tar.gz",
    } <= set(files)
    res = json.loads((out / "reid_real_gpu.json").read_text())
    assert set(res["tables"]) == {"1", "2", "3", "4", "5"}, res["skipped"]
    train = json.loads((out / "bench_train_gpu.json").read_text())
    assert {(r["mode"], r["precision"]) for r in train["runs"]} == {
        (m, p) for m in ("loop", "plain") for p in ("fp32", "bf16")
    }
    assert all(r["images_per_s"] > 0 for r in train["runs"])
    assert (out / "extras.tar.gz").stat().st_size > 0


def _synthetic_corpus(tmp_path: Path, split: str, patterns: list[str]) -> Path:
    """A tiny synthetic corpus of ``patterns`` on ``split``, compacted as the benchmark does, at corpora/<split>."""
    src = tmp_path / f"{split}_src"
    cmd = [sys.executable, "-m", "data_scripts.build", "--sources", "synthetic", "--split", split]
    cmd += ["--out", str(src), "--no-progress", "--synthetic-patterns", *patterns]
    cmd += ["--synthetic-identities", "12", "--synthetic-images", "6", "--synthetic-encounters", "3"]
    cmd += ["--synthetic-size", "40"]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    reid_real.compact_corpus(src, tmp_path / "corpora" / split, size=32, seed=0)
    return tmp_path / "corpora"


def _closed_corpora(tmp_path: Path) -> Path:
    """A tiny closed-set synthetic corpus (``open`` a copy, unused by table 1)."""
    corpora = _synthetic_corpus(tmp_path, "closed", ["stripes", "spots"])
    shutil.copytree(corpora / "closed", corpora / "open")
    return corpora


def test_smoke_table1_has_the_peer_arm_with_the_same_image_count(tmp_path):
    """Table 1 on a tiny closed-set synthetic corpus: ImageNet floor, ours, ours with plain ArcFace and the peer
    recipe (benchmarks/peer_arcface.py), the peer trained on as many images as ours; top-1 and mAP reported."""
    corpora = _closed_corpora(tmp_path)
    results = tmp_path / "res" / "smoke"
    argv = ["--config", str(SMOKE), "--corpora", str(corpora), "--out", str(tmp_path / "work")]
    argv += ["--results", str(results), "--set", "tables=[1]", "closed_parallel_runs=2"]
    res = reid_real.main(argv)
    assert res["skipped"] == []
    for name in ("t1_ours", "t1_arcface", "t1_peer"):  # three runs, two at a time (not all at once)
        saved = json.loads((tmp_path / "work" / "runs" / name / "results.json").read_text())
        assert saved["parallel_runs"] == 2, name
    t1 = res["tables"]["1"]
    assert len(t1["rows"]) == 4 and any(k.startswith("peer recipe") for k in t1["rows"])
    seen = {k: v["train_images_seen"] for k, v in t1["runs"].items()}
    assert len(set(seen.values())) == 1 and next(iter(seen.values())) > 0, seen
    for per in t1["rows"].values():
        for sp in t1["species"]:
            m = per["megadescriptor"][sp]
            assert 0.0 <= m["top1"] <= 1.0 and 0.0 <= m["mAP"] <= 1.0 and m["n_queries"] > 0
    md = results.with_suffix(".md").read_text()
    assert "mAP" in md and "1 query =" in md


def test_table1_refit_arms_train_on_train_and_validation_with_the_same_schedule(tmp_path):
    """closed_refit: ours and the peer again on train + validation, with ours's image count and schedule."""
    corpora = _closed_corpora(tmp_path)
    work = tmp_path / "work"
    argv = ["--config", str(SMOKE), "--corpora", str(corpora), "--out", str(work), "--results", str(tmp_path / "r")]
    argv += ["--set", "tables=[1]", "closed_plain_arcface=false", "closed_refit=true", "closed_parallel_runs=2"]
    res = reid_real.main(argv)
    assert res["skipped"] == []
    runs = work / "runs"
    ours, refit = (json.loads((runs / n / "results.json").read_text()) for n in ("t1_ours", "t1_ours_refit"))
    assert refit["train_images_seen"] == ours["train_images_seen"] and refit["epochs"] == ours["epochs"]
    assert refit["best_epoch"] is None and ours["best_epoch"] is not None  # the refit scores no validation
    assert "--train_on_validation" in refit["argv"]
    peer_refit = json.loads((runs / "t1_peer_refit" / "results.json").read_text())
    assert peer_refit["splits"] == ["train", "validation"] and peer_refit["train_images"] == ours["train_images_seen"]
    assert json.loads((runs / "t1_peer" / "results.json").read_text())["splits"] == ["train"]
    labels = list(res["tables"]["1"]["rows"])
    assert any("refit" in k and k.startswith("ours") for k in labels)
    assert any("refit" in k and k.startswith("peer") for k in labels)


def test_table1_scores_an_arm_again_with_test_time_flip_on_the_same_weights(tmp_path):
    corpora = _closed_corpora(tmp_path)
    work = tmp_path / "work"
    argv = ["--config", str(SMOKE), "--corpora", str(corpora), "--out", str(work), "--results", str(tmp_path / "r")]
    argv += ["--set", "tables=[1]", "closed_plain_arcface=false", "closed_arms=[ours]"]
    refused = reid_real.main([*argv, "closed_flip_tta=[peer]"])  # not trained here: refused before training
    assert "closed_flip_tta ['peer']: not arms this config trains (['t1_ours'])" in refused["skipped"][0]
    assert not (work / "runs" / "t1_ours").exists()
    argv[-1] = "closed_arms=[ours, ours_refit]"
    t1 = reid_real.main([*argv, "closed_refit=true", "closed_flip_tta=[ours, ours_refit]"])["tables"]["1"]
    export = work / "runs" / "t1_ours" / "export"
    flipped = export.parent / "export_test_time_flip"
    assert json.loads((flipped / "config.json").read_text())["test_time_flip"] is True
    assert not json.loads((export / "config.json").read_text()).get("test_time_flip")
    assert (flipped / "model.safetensors").read_bytes() == (export / "model.safetensors").read_bytes()
    label = "ours, ours, + test-time flip (same weights)"
    plain = next(k for k in t1["rows"] if k.startswith("ours ("))
    assert label in t1["rows"] and t1["rows"][label] != t1["rows"][plain]
    val = t1["test_time_flip_validation"][label]
    assert set(val) == set(t1["species"]) and all(0 <= m["top1"] <= 1 for m in val.values())
    # the refit trained on the validation images: scored on test with the flip, no validation reported
    assert "ours, ours_refit, + test-time flip (same weights)" in t1["rows"]
    assert list(t1["test_time_flip_validation"]) == [label]
    assert "+ test-time flip" in (tmp_path / "r").with_suffix(".md").read_text()


def _pretrain_corpora(tmp_path: Path, open_patterns: list[str]) -> Path:
    """A closed corpus of ``synth_stripes`` and an open one of ``open_patterns``."""
    _synthetic_corpus(tmp_path, "closed", ["stripes"])
    return _synthetic_corpus(tmp_path, "open", open_patterns)


def test_table1_multispecies_start_never_trains_on_the_closed_species_and_arms_can_be_limited(tmp_path):
    """closed_pretrain: a run on the open corpus's other species, then ours fine-tuned from it (and refitted);
    closed_arms trains only the arms named, beside the ImageNet floor."""
    corpora = _pretrain_corpora(tmp_path, ["stripes", "spots"])
    work = tmp_path / "work"
    argv = ["--config", str(SMOKE), "--corpora", str(corpora), "--out", str(work), "--results", str(tmp_path / "r")]
    argv += ["--set", "tables=[1]", "closed_refit=true", "closed_pretrain=true", "closed_arms=[multi, multi_refit]",
             "closed_finetune={lr_backbone: 0.005}"]  # fmt: skip
    res = reid_real.main(argv)
    assert res["skipped"] == []
    runs = work / "runs"
    assert sorted(p.name for p in runs.iterdir() if p.is_dir()) == ["t1_multi", "t1_multi_refit", "t1_pretrain"]
    pre = json.loads((runs / "t1_pretrain" / "results.json").read_text())
    after = pre["argv"][pre["argv"].index("--species") + 1 :]
    assert after[0] == "synth_spots" and after[1].startswith("--")  # the closed corpus's species left out
    for name in ("t1_multi", "t1_multi_refit"):
        argv_run = json.loads((runs / name / "results.json").read_text())["argv"]
        assert argv_run[argv_run.index("--init_from") + 1] == pre["export_dir"]
        assert argv_run[argv_run.index("--lr_backbone") + 1] == "0.005"  # closed_finetune: the fine-tuning only
    assert "0.005" not in pre["argv"]
    assert "--train_on_validation" in json.loads((runs / "t1_multi_refit" / "results.json").read_text())["argv"]
    labels = list(res["tables"]["1"]["rows"])
    assert len(labels) == 3 and "no re-ID training" in labels[0] and "multispecies" in labels[1]
    assert "lr_backbone=0.005" in labels[1] and "lr_backbone=0.005" in labels[2]
    start = res["tables"]["1"]["multispecies_start"]
    assert start["export_dir"] == pre["export_dir"] and set(start["val_best"]) == {"synth_spots"}
    assert "the multispecies start (never saw synth_stripes)" in (tmp_path / "r.md").read_text()


def test_a_multispecies_start_without_other_species_is_refused(tmp_path):
    corpora = _pretrain_corpora(tmp_path, ["stripes"])
    argv = ["--config", str(SMOKE), "--corpora", str(corpora), "--out", str(tmp_path / "w")]
    argv += ["--results", str(tmp_path / "r"), "--set", "tables=[1]", "closed_pretrain=true", "closed_arms=[multi]"]
    res = reid_real.main(argv)
    assert res["tables"] == {} and "no species beyond the closed corpus's ['synth_stripes']" in res["skipped"][0]
    assert not (tmp_path / "w" / "runs").exists()


def test_an_unknown_table1_arm_is_refused_before_anything_trains(tmp_path):
    corpora = _pretrain_corpora(tmp_path, ["stripes", "spots"])
    argv = ["--config", str(SMOKE), "--corpora", str(corpora), "--out", str(tmp_path / "w")]
    argv += ["--results", str(tmp_path / "r"), "--set", "tables=[1]", "closed_refit=true", "closed_arms=[ours, refit]"]
    res = reid_real.main(argv)
    assert res["tables"] == {}
    has = "which has ['arcface', 'ours', 'ours_refit', 'peer', 'peer_refit']"
    assert f"closed_arms ['refit']: not arms of this config, {has}" in res["skipped"][0]
    assert not (tmp_path / "w" / "runs").exists()


@pytest.mark.parametrize("path", sorted((REPO / "benchmarks" / "configs").glob("bench_*.yaml")), ids=lambda p: p.name)
def test_every_shipped_benchmark_config_loads(path):
    cfg = reid_real.load_bench_config(path)
    assert set(cfg.tables) <= set(reid_real.TABLE_ORDER)
    assert cfg.train_config is None or (REPO / cfg.train_config).is_file(), cfg.train_config
    if cfg.closed_arms is not None:
        refit = {"ours_refit", "peer_refit"} if cfg.closed_refit else set()
        multi = {"multi", "multi_refit"} if cfg.closed_pretrain else set()
        assert set(cfg.closed_arms) <= {"ours", "arcface", "peer", *refit, *multi, *cfg.closed_variants}


def test_open_runs_train_two_at_a_time_then_the_tables_reuse_them(tiny_corpus, tmp_path):
    """``parallel_runs=2``: every run of tables 2-4 (multispecies, without the zero-shot species, one per species)
    is trained as a subprocess, two at a time, before the tables; the tables then train nothing themselves except
    table 4's fine-tuning runs, and their figures come from those runs."""
    corpora = tmp_path / "corpora"
    reid_real.compact_corpus(tiny_corpus, corpora / "open", size=32, seed=0)
    shutil.copytree(corpora / "open", corpora / "closed")
    argv = ["--config", str(SMOKE), "--corpora", str(corpora), "--out", str(tmp_path / "work")]
    argv += ["--results", str(tmp_path / "res" / "par"), "--set", "tables=[2, 3, 4]", "parallel_runs=2"]
    res = reid_real.main(argv)
    n = reid_real.load_bench_config(SMOKE).finetune_identities
    assert res["skipped"] == []
    pooled = {"t2_multi", "t3_without_synth_stripes", "t2_only_synth_spots", "t2_only_synth_stripes"}
    assert pooled <= set(res["run_times_s"])
    assert set(res["run_times_s"]) - pooled == {
        f"t4_synth_stripes_{n}_from_multi",
        f"t4_synth_stripes_{n}_from_imagenet",
    }
    for name in pooled:
        saved = json.loads((tmp_path / "work" / "runs" / name / "results.json").read_text())
        assert saved["parallel_runs"] == 2 and saved["bench_wall_s"] > 0
    only = json.loads((tmp_path / "work" / "runs" / "t2_only_synth_spots" / "results.json").read_text())
    assert "--species" in only["argv"] and "synth_spots" in only["argv"]
    assert res["tables"]["2"]["rows"]["synth_spots"]["species_specific"]["top1"] is not None


def test_table4_lr_grid_picks_each_starts_rate_on_validation(tmp_path, monkeypatch):
    cfg = reid_real.load_bench_config(SMOKE, ["finetune_lr_grid=[0.01, 0.001]"])
    bench = reid_real.Bench(cfg=cfg, work=tmp_path, corpora={}, deadline=reid_real.Deadline(None))
    val = {"t4_x_lr0.01": (0.2, 0.3), "t4_x_lr0.001": (0.2, 0.4)}  # a tie in top-1: mAP decides
    calls = []

    def fake_train(name, corpus, **over):
        calls.append((name, over["lr_backbone"], over["lr_head"], over["epochs"]))
        top1, mAP = val[name]
        per = {"x": {"top1": top1 / 2, "mAP": mAP / 2, "n_queries": 10}}
        return {"val_best": {"per_species": {"x": {"top1": top1, "mAP": mAP}}}, "test": {"per_species": per}}

    monkeypatch.setattr(bench, "train", fake_train)
    res, grid = finetune(bench, "t4_x", tmp_path, "x", epochs=2, lr_backbone=0.5)
    assert calls == [("t4_x_lr0.01", 0.01, 0.01, 2), ("t4_x_lr0.001", 0.001, 0.001, 2)]
    assert res["val_best"]["per_species"]["x"]["mAP"] == 0.4
    assert grid["0.001"]["chosen"] and not grid["0.01"]["chosen"]
    assert grid["0.01"]["validation"] == {"top1": 0.2, "mAP": 0.3} and grid["0.01"]["test"]["top1"] == 0.1
    assert "| from X | 0.001 (chosen) | 20.0 / 40.0 | 10.0 / 20.0 |" in lr_grid_lines({"from X": grid})
    # without a grid: one run at the configured rate, under its own name
    bench.cfg = reid_real.load_bench_config(SMOKE)
    val["t4_y"] = (0.1, 0.1)
    calls.clear()
    _, none = finetune(bench, "t4_y", tmp_path, "x", epochs=2, lr_backbone=0.5, lr_head=0.5)
    assert calls == [("t4_y", 0.5, 0.5, 2)] and none == {}


def test_a_failed_parallel_run_stops_the_others_with_its_log_named(tiny_corpus, tmp_path):
    corpora = tmp_path / "corpora"
    reid_real.compact_corpus(tiny_corpus, corpora / "open", size=32, seed=0)
    cfg = reid_real.load_bench_config(SMOKE)
    bench = reid_real.Bench(cfg=cfg, work=tmp_path / "w", corpora={"open": corpora / "open"},
                            deadline=reid_real.Deadline(None))  # fmt: skip
    specs = {"bad": {"epochs": 0}, "slow": {"epochs": 50, "batches_per_epoch": 50}, "never": {}}
    with pytest.raises(RuntimeError, match=r"bad failed .*bad\.log"):
        bench.train_parallel(corpora / "open", specs, at_once=2)
    assert not (tmp_path / "w" / "runs" / "never").exists()  # not started: the pool stopped at the failure
    assert not (tmp_path / "w" / "runs" / "slow" / "results.json").exists()  # killed, left to restart later


def test_two_calls_on_one_work_directory_keep_their_own_datasets_cache(tmp_path):
    """Two benchmark calls at once on one ``--out`` (tables split between two jobs): each call's cache is its own
    folder, and the first to finish deletes only its own, never the other's."""
    import datasets

    before = os.environ.get("HF_DATASETS_CACHE")
    first = reid_real.use_private_datasets_cache(tmp_path)
    first_dir = Path(os.environ["HF_DATASETS_CACHE"])
    second = reid_real.use_private_datasets_cache(tmp_path)
    second_dir = Path(os.environ["HF_DATASETS_CACHE"])
    assert first_dir != second_dir and first_dir.parent == second_dir.parent == tmp_path / "hf_datasets_cache"
    assert Path(datasets.config.HF_DATASETS_CACHE) == second_dir
    (first_dir / "arrow").write_text("x")
    reid_real.restore_datasets_cache(second)
    assert not second_dir.exists() and (first_dir / "arrow").is_file()
    assert Path(os.environ["HF_DATASETS_CACHE"]) == first_dir
    reid_real.restore_datasets_cache(first)
    assert not first_dir.exists()
    assert os.environ.get("HF_DATASETS_CACHE") == before


def test_table3_page_gives_queries_and_the_win_rule_where_a_tie_loses():
    from benchmarks.reid.report import render_markdown

    def m(top1, ap, n=40):
        return {"top1": top1, "mAP": ap, "n_queries": n}

    rows = {
        "above": {"imagenet": m(0.10, 0.10), "zero_shot": m(0.20, 0.11)},
        "tie": {"imagenet": m(0.10, 0.10), "zero_shot": m(0.10, 0.30)},
        "lower_map": {"imagenet": m(0.10, 0.10), "zero_shot": m(0.30, 0.09, n=7)},
        "untrained": {"imagenet": m(0.10, 0.10), "zero_shot": {"top1": None, "mAP": None}},
    }
    meta = {"config_name": "c", "date": "d", "machine": "m", "wall_time_s": 1.0, "command": "x", "budget": "b"}
    page = render_markdown({"meta": meta, "tables": {"3": {"rows": rows}}})
    lines = {line.split(" | ")[0][2:]: line for line in page.splitlines() if line.startswith("| ")}
    assert lines["above"].endswith("| yes |") and "| 40 |" in lines["above"]
    assert lines["tie"].endswith("| no |")
    assert lines["lower_map"].endswith("| no |") and "| 7 |" in lines["lower_map"]
    assert lines["untrained"].endswith("| – |")
