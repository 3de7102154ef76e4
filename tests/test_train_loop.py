"""End-to-end runs of train_accelerate.py on a tiny generated corpus, asserting on what they wrote.

A tiny timm model (``test_efficientnet``, 64 px, a few batches per epoch) keeps every run to seconds.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

import train_accelerate
from animal_reid.training.config import parse_config
from animal_reid.training.interpolate import interpolate_state
from animal_reid.training.model import build_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tiny_corpus) -> Path:
    return tiny_corpus  # conftest.py: 8 synthetic identities x 4 images, 64 px


def tiny_args(corpus: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--corpus", str(corpus), "--output_dir", str(out),
        "--backbone", "test_efficientnet", "--init_weights", "none", "--image_size", "64", "--embedding_dim", "32",
        "--epochs", "2", "--batches_per_epoch", "3", "--identities_per_batch", "4", "--images_per_identity", "2",
        "--num_workers", "0", "--eval_batch_size", "16", "--log_every", "1", "--lr_head", "1e-2", "--lr_backbone", "1e-4",
        # the paper's ingredients (GeM, BNNeck, sub-center ArcFace k=3 with dynamic margins), not the defaults,
        # so the loop is tested with every component the model has
        "--pooling", "gem", "--neck_bn", "true", "--subcenters", "3", "--dynamic_margins", "true",
        "--margin_min", "0.05", "--scale", "30",
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def base_run(corpus, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("runs") / "base"
    results = train_accelerate.main(tiny_args(corpus, out))
    return out, results


def _history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_run_writes_config_metrics_plots_checkpoints(base_run, corpus):
    run_dir, results = base_run
    resolved = parse_config([str(run_dir / "config.yaml")])
    assert resolved.to_flat_dict() == parse_config(tiny_args(corpus, run_dir)).to_flat_dict()

    history = _history(run_dir)
    assert [h["epoch"] for h in history] == [1, 2]
    for h in history:
        assert np.isfinite(h["train_loss"]) and h["train_loss"] > 0
        assert (
            h["images_per_s"] > 0
            and h["lr_backbone"] > 0
            and h["lr_head"] == pytest.approx(100 * h["lr_backbone"])
        )
        for key in ("top1", "top5", "mAP"):
            assert 0.0 <= h["val"][key] <= 1.0
        assert set(h["val"]["per_species"]) == {"synth_spots", "synth_stripes"}
    assert history[-1]["best_epoch"] == results["best_epoch"] in (1, 2)
    best = max(history, key=lambda h: h["val"]["top1"])
    assert results["val_best"]["top1"] == best["val"]["top1"]

    for png in ("loss.png", "val_metrics.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "epoch 2" in (run_dir / "train.log").read_text()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["checkpoint_0", "checkpoint_1"]
    assert [p.name for p in (run_dir / "best").iterdir()] == [f"epoch_{results['best_epoch']}"]
    assert json.loads((run_dir / "results.json").read_text())["test"] == results["test"]
    assert 0.0 <= results["test"]["top1"] <= 1.0 and results["test_protocol"] == "leave_one_out"


def test_export_loads_with_automodel_and_pipeline(base_run, corpus):
    from PIL import Image
    from transformers import AutoModel, pipeline

    export = base_run[0] / "export"
    files = {p.name for p in export.iterdir()}
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pth")) for f in files), files
    config = json.loads((export / "config.json").read_text())
    assert config.get("head") is None and config["backbone"] == "test_efficientnet"
    assert not any(k.startswith("head.") for k in load_file(str(export / "model.safetensors")))

    model = AutoModel.from_pretrained(export, trust_remote_code=True).eval()
    image = Image.new("RGB", (80, 64))
    image.putdata([((x * 3) % 256, (y * 5) % 256, (x * y) % 256) for y in range(64) for x in range(80)])
    emb = model.encode([image])
    assert emb.shape == (1, 32) and np.isclose(np.linalg.norm(emb), 1.0, atol=1e-5)
    extractor = pipeline("image-feature-extraction", model=str(export), trust_remote_code=True)
    from_pipeline = np.asarray(extractor(image, pool=True)).reshape(-1)
    np.testing.assert_allclose(from_pipeline, emb[0], atol=1e-5)


def test_model_card_carries_the_run(base_run):
    from huggingface_hub import ModelCard

    run_dir, results = base_run
    card = ModelCard.load(run_dir / "export" / "README.md")
    data = card.data
    assert data.pipeline_tag == "image-feature-extraction"
    assert data.library_name == "transformers"
    assert data.license == "apache-2.0"
    assert "animal-reid" in data.tags and "species:synth_spots" in data.tags
    got = {(r.dataset_config, r.metric_type): r.metric_value for r in data.eval_results}
    for sp, m in results["test"]["per_species"].items():
        assert got[(sp, "top1_accuracy")] == pytest.approx(round(100 * m["top1"], 2))
        assert got[(sp, "map")] == pytest.approx(round(100 * m["mAP"], 2))
    assert got[("all", "top1_accuracy")] == pytest.approx(round(100 * results["test"]["top1"], 2))
    text = card.text
    assert "test_efficientnet" in text and "trust_remote_code=True" in text
    assert 'pipeline("image-feature-extraction"' in text
    assert "CC0" in text  # the synthetic source's licence, read from the corpus card
    assert "## Limitations" in text and "arXiv:2412.05602" in text
    assert "procedurally generated" in text
    # widget examples: synthetic test images copied beside the model (never real photos)
    assert data.widget and all(w["src"].startswith("examples/") for w in data.widget)
    for w in data.widget:
        assert (run_dir / "export" / w["src"]).is_file()


def test_existing_run_dir_needs_resume(base_run, corpus):
    """A previous run is continued only with --resume, replaced only with --overwrite (issue 31's policy; was a
    FileExistsError on checkpoints alone). The refusal changes nothing in the folder."""
    from animal_reid.manifest import OutputError

    run_dir = base_run[0]
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(OutputError) as info:
        train_accelerate.main(tiny_args(corpus, run_dir))
    assert str(info.value) == (
        f"output_dir {run_dir} holds a previous training run: pass --resume to continue it, --overwrite to replace "
        "its files (files you added there are kept), or choose another output_dir"
    )
    assert {
        p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file() and p.name != ".animal-reid.lock"
    } == {p: t for p, t in before.items() if p.name != ".animal-reid.lock"}


class _Killed(Exception):
    pass


def _kill_after_first_checkpoint(monkeypatch, argv: list[str]) -> None:
    """Run ``train_accelerate.main(argv)`` until its first checkpoint is saved, then kill it there."""
    from accelerate import Accelerator

    original = Accelerator.save_state

    def save_then_die(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise _Killed("killed after the first checkpoint")

    monkeypatch.setattr(Accelerator, "save_state", save_then_die)
    with pytest.raises(_Killed):
        train_accelerate.main(argv)
    monkeypatch.setattr(Accelerator, "save_state", original)


def _comparable(history: list[dict]) -> list[tuple]:
    return [
        (h["epoch"], h["train_loss"], h["lr_head"], json.dumps(h["val"], sort_keys=True)) for h in history
    ]


def _same_run(run_dir: Path, results: dict, base_dir: Path, base_results: dict) -> None:
    assert _comparable(_history(run_dir)) == _comparable(_history(base_dir))
    assert results["test"] == base_results["test"]
    assert results["best_epoch"] == base_results["best_epoch"]
    a = load_file(str(run_dir / "export" / "model.safetensors"))
    b = load_file(str(base_dir / "export" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("workers", ["0", "2"])
def test_killed_and_resumed_run_ends_like_an_uninterrupted_one(
    base_run, corpus, tmp_path, monkeypatch, workers
):
    """Stop right after the epoch-1 checkpoint (as a kill would), resume, compare with the uninterrupted run.

    With workers, the killed part starts persistent ones and the resumed part new ones; the base run decodes
    in-process (num_workers 0): the batches, augmentations and weights must not depend on either.
    """
    run_dir = tmp_path / "killed"
    _kill_after_first_checkpoint(monkeypatch, tiny_args(corpus, run_dir, "--num_workers", workers))
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["checkpoint_0"]
    assert not (run_dir / "export").exists()

    results = train_accelerate.main(tiny_args(corpus, run_dir, "--resume", "--num_workers", workers))
    base_dir, base_results = base_run
    # the next save after load_state went to checkpoint_1 (project_configuration.iteration was restored)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["checkpoint_0", "checkpoint_1"]
    _same_run(run_dir, results, base_dir, base_results)


def test_resume_with_workers_keeps_the_global_rng_stream(corpus, tmp_path, monkeypatch):
    """With dropout (drawing from the global torch RNG), a run killed and resumed on persistent workers ends
    like an uninterrupted one: the loader's iterator, made once per run rather than once per epoch, draws
    from its own generator, never from the global RNG that every epoch reseeds."""
    build = build_model

    def with_dropout(*args, **kwargs):
        model, processor = build(*args, **kwargs)
        model.dropout = torch.nn.Dropout(0.5)
        return model, processor

    monkeypatch.setattr(train_accelerate, "build_model", with_dropout)
    args = ("--num_workers", "2")
    base_dir = tmp_path / "uninterrupted"
    base_results = train_accelerate.main(tiny_args(corpus, base_dir, *args))

    run_dir = tmp_path / "killed"
    _kill_after_first_checkpoint(monkeypatch, tiny_args(corpus, run_dir, *args))
    results = train_accelerate.main(tiny_args(corpus, run_dir, "--resume", *args))
    _same_run(run_dir, results, base_dir, base_results)


def test_persistent_workers_train_like_in_process_decoding(base_run, corpus, tmp_path):
    """Two epochs on 2 persistent workers (kept across epochs and evaluations): same run as num_workers 0."""
    run_dir = tmp_path / "workers"
    results = train_accelerate.main(tiny_args(corpus, run_dir, "--num_workers", "2"))
    _same_run(run_dir, results, base_run[0], base_run[1])


@pytest.mark.parametrize("workers", ["0", "2"])
def test_image_cache_trains_like_decoding_every_time(base_run, corpus, tmp_path, workers, caplog):
    """--cache_images: every image decoded once into shared memory; the run is the same, bit for bit."""
    run_dir = tmp_path / f"cache{workers}"
    with caplog.at_level("INFO"):
        results = train_accelerate.main(
            tiny_args(corpus, run_dir, "--cache_images", "true", "--num_workers", workers)
        )
    assert "image cache:" in caplog.text
    _same_run(run_dir, results, base_run[0], base_run[1])


def test_image_cache_beyond_its_limit_is_skipped_with_a_warning(base_run, corpus, tmp_path, caplog):
    run_dir = tmp_path / "nocache"
    with caplog.at_level("WARNING"):
        results = train_accelerate.main(
            tiny_args(corpus, run_dir, "--cache_images", "true", "--cache_max_gb", "0.0001")
        )
    assert "image cache skipped: needs" in caplog.text
    _same_run(run_dir, results, base_run[0], base_run[1])


def test_finetune_warmup_keeps_backbone_batchnorm_statistics(base_run, corpus, tmp_path):
    export = base_run[0] / "export"
    start = load_file(str(export / "model.safetensors"))
    run_dir = tmp_path / "finetune"
    train_accelerate.main(
        tiny_args(
            corpus,
            run_dir,
            "--init_from",
            str(export),
            "--freeze_backbone_epochs",
            "1",
            "--lr_backbone",
            "1e-2",
        )
    )
    history = _history(run_dir)
    assert [h["backbone_frozen"] for h in history] == [True, False]
    after_warmup = load_file(str(run_dir / "checkpoints" / "checkpoint_0" / "model.safetensors"))
    after_full = load_file(str(run_dir / "checkpoints" / "checkpoint_1" / "model.safetensors"))
    backbone = [k for k in start if k.startswith("backbone.")]
    bn_stats = [k for k in backbone if k.endswith(("running_mean", "running_var"))]
    assert bn_stats, "test_efficientnet has BatchNorm layers"
    for k in backbone:  # weights and running statistics untouched by the head-only warm-up
        assert torch.equal(after_warmup[k], start[k]), k
    assert any(not torch.equal(after_full[k], start[k]) for k in bn_stats), (
        "full fine-tuning updates BatchNorm"
    )
    assert any(not torch.equal(after_warmup[k], start[k]) for k in start if not k.startswith("backbone.")), (
        "the head-side layers (pooling, neck) train during the warm-up"
    )
    # a new head, one class per training identity of the fine-tuning corpus
    assert (
        after_warmup["head.weight"].shape[0]
        == 3 * json.loads((run_dir / "results.json").read_text())["num_classes"]
    )


def test_push_to_hub_emulator(base_run, corpus, tmp_path):
    """`--push_to_hub REPO` in a client process: model, processor and the card (pushed last) reach the Hub."""
    from animal_reid.testing.hub_emulator import HubEmulator

    args = tiny_args(corpus, tmp_path / "pushed", "--epochs", "1", "--push_to_hub", "me/tiny-reid")
    code = f"""
import json, sys
sys.path.insert(0, {str(REPO)!r})
import train_accelerate
train_accelerate.main({args!r})
from huggingface_hub import HfApi, ModelCard
from transformers import AutoModel, AutoImageProcessor
files = sorted(HfApi().list_repo_files("me/tiny-reid"))
card = ModelCard.load("me/tiny-reid")
model = AutoModel.from_pretrained("me/tiny-reid", trust_remote_code=True)
proc = AutoImageProcessor.from_pretrained("me/tiny-reid", trust_remote_code=True)
print(json.dumps({{"files": files, "widget": card.data.widget, "tag": card.data.pipeline_tag, "n_results": len(card.data.eval_results or []),
                   "dim": model.config.embedding_dim, "size": proc.size}}))
"""
    with HubEmulator(tmp_path / "hub") as hub:
        proc = hub.run_python(code, cwd=str(REPO), timeout=240)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {
        "README.md",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "modeling_animal_reid.py",
    } <= set(out["files"])
    assert out["tag"] == "image-feature-extraction" and out["n_results"] >= 4
    assert out["dim"] == 32 and out["size"] == {"height": 64, "width": 64}
    assert "model-index" in (tmp_path / "pushed" / "export" / "README.md").read_text()
    # the widget points at the examples uploaded beside the model
    assert out["widget"] and all(w["src"].split("/resolve/main/")[1] in out["files"] for w in out["widget"])


@pytest.mark.slow
def test_two_process_cpu_run_trains_and_exports(corpus, tmp_path):
    """`ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2`: real DDP over gloo on the CPU."""
    out = tmp_path / "ddp"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           str(REPO / "train_accelerate.py"),
           *tiny_args(corpus, out, "--batches_per_epoch", "8", "--gradient_accumulation_steps", "2")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    assert results["num_processes"] == 2
    assert (out / "export" / "model.safetensors").is_file()
    # 8 global batches per epoch, 4 per process, accumulated 2 by 2: 2 optimiser steps per epoch
    log = (out / "train.log").read_text()
    assert "4 batches/process (2 processes, P=4 x K=2, accumulation 2): 4 optimiser steps" in log
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [2, 4]
    # the main process listed every file of the run, the other process's random states included
    listed = set(json.loads((out / ".animal-reid-manifest.json").read_text())["files"])
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert listed == written - {".animal-reid-manifest.json", ".animal-reid.lock"}
    assert any(k.endswith("random_states_1.pkl") for k in listed)


@pytest.mark.slow
def test_sigkill_and_resume_in_a_subprocess(base_run, corpus, tmp_path):
    """A real SIGKILL once the epoch-1 checkpoint is complete, then `--resume`: same metrics as uninterrupted."""
    run_dir = tmp_path / "sigkill"
    cmd = [
        sys.executable,
        str(REPO / "train_accelerate.py"),
        *tiny_args(corpus, run_dir, "--batches_per_epoch", "3"),
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = run_dir / "checkpoints" / "checkpoint_0" / "custom_checkpoint_0.pkl"
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if (run_dir / "export").exists():
        pytest.skip("the run finished before it could be killed")
    results = train_accelerate.main(tiny_args(corpus, run_dir, "--resume"))
    assert results["test"] == base_run[1]["test"]
    assert _comparable(_history(run_dir)) == _comparable(_history(base_run[0]))


def test_corpus_rebuilt_in_place_is_not_read_stale(tmp_path):
    """datasets caches a local folder by its name, not its content: load_corpus must see the rebuilt files."""
    from animal_reid.training.data import load_corpus
    from data_scripts.build import main as build_main

    out = tmp_path / "tiny"  # the same base name as the module's corpus, on purpose
    sizes = []
    for n_ids in (3, 6):
        build_main(
            ["--sources", "synthetic", "--out", str(out), "--split", "open", "--synthetic-identities", str(n_ids),
             "--synthetic-images", "3", "--synthetic-size", "40", "--synthetic-patterns", "stripes", "--no-progress",
             "--overwrite"]
        )  # fmt: skip
        corpus = load_corpus(parse_config(["--corpus", str(out)]).data, seed=0)
        sizes.append(sum(len(s) for s in corpus.splits.values()))
    assert sizes == [9, 18]


def test_query_gallery_protocol_on_a_closed_split(tmp_path):
    """MegaDescriptor's protocol: validation queries the train images; test queries train + validation."""
    from data_scripts.build import main as build_main

    closed = tmp_path / "closed"
    build_main(
        ["--sources", "synthetic", "--out", str(closed), "--split", "closed", "--synthetic-identities", "6",
         "--synthetic-images", "6", "--synthetic-size", "48", "--synthetic-patterns", "spots", "--no-progress"]
    )  # fmt: skip
    results = train_accelerate.main(
        tiny_args(closed, tmp_path / "run", "--epochs", "1", "--eval_protocol", "query_gallery")
    )
    assert results["test_protocol"] == "query_gallery"
    # closed set: every test identity has gallery images, so every test image is a query
    from animal_reid.training.data import load_corpus

    corpus = load_corpus(parse_config(["--corpus", str(closed)]).data, seed=0)
    assert results["test"]["n_queries"] == len(corpus.splits["test"])
    assert results["val_best"]["n_queries"] == len(corpus.splits["validation"])
    assert 0.0 <= results["test"]["top1"] <= 1.0


def test_refit_trains_on_validation_scores_none_and_exports_the_last_epoch(tmp_path):
    """train_on_validation: the validation images join training, no epoch is scored on them, the last epoch is
    exported, and the closed-set test queries the train split (which holds validation) without duplicates."""
    from animal_reid.training.data import load_corpus
    from data_scripts.build import main as build_main

    closed = tmp_path / "closed"
    build_main(
        ["--sources", "synthetic", "--out", str(closed), "--split", "closed", "--synthetic-identities", "6",
         "--synthetic-images", "6", "--synthetic-size", "48", "--synthetic-patterns", "spots", "--no-progress"]
    )  # fmt: skip
    plain = load_corpus(parse_config(["--corpus", str(closed)]).data, seed=0)
    refit = load_corpus(parse_config(["--corpus", str(closed), "--train_on_validation", "true"]).data, seed=0)
    assert refit.refit and not plain.refit
    assert len(refit.splits["train"]) == len(plain.splits["train"]) + len(plain.splits["validation"])
    assert sorted(refit.splits["train"]["image_id"]) == sorted(
        list(plain.splits["train"]["image_id"]) + list(plain.splits["validation"]["image_id"])
    )
    assert refit.train_counts != plain.train_counts and sum(refit.train_counts) == len(refit.splits["train"])

    run_dir = tmp_path / "run"
    results = train_accelerate.main(
        tiny_args(
            closed, run_dir, "--epochs", "2", "--eval_protocol", "auto", "--train_on_validation", "true"
        )
    )
    assert results["best_epoch"] is None and results["val_best"] is None
    assert results["baseline"]["val"]["top1"] is None and results["beats_baseline"] is None
    assert all(h["val"]["top1"] is None for h in _history(run_dir))
    assert results["test_protocol"] == "query_gallery"  # closed: told from the test identities
    assert results["test"]["n_queries"] == len(plain.splits["test"])
    # the export is the last epoch's weights (the final checkpoint), not a "best" folder
    assert not (run_dir / "best").exists() or not any((run_dir / "best").iterdir())
    last = load_file(str(run_dir / "checkpoints" / "checkpoint_1" / "model.safetensors"))
    exported = load_file(str(run_dir / "export" / "model.safetensors"))
    key = next(k for k in exported if k.endswith("conv_stem.weight"))
    assert torch.equal(exported[key], last[next(k for k in last if k.endswith("conv_stem.weight"))])
    card = (run_dir / "export" / "README.md").read_text()
    assert "refit" in card and "Validation at the best epoch" not in card


def test_refit_cannot_choose_an_interpolation_on_validation(corpus, tmp_path):
    with pytest.raises(ValueError, match="train_on_validation"):
        parse_config(
            tiny_args(corpus, tmp_path / "r", "--train_on_validation", "true", "--interpolate_alphas", "0.5")
        )


def _expected_export(run_dir, results):
    start = load_file(str(run_dir / "start" / "model.safetensors"))
    best = load_file(str(run_dir / "best" / f"epoch_{results['best_epoch']}" / "model.safetensors"))
    return interpolate_state(start, best, results["interpolation"]["chosen_alpha"])


def test_run_exports_the_interpolation_chosen_on_validation(corpus, tmp_path, monkeypatch):
    run_dir = tmp_path / "wise"
    results = train_accelerate.main(tiny_args(corpus, run_dir, "--interpolate_alphas", "0.25", "0.5"))
    interp = results["interpolation"]
    assert set(interp["val"]) == {"1", "0.25", "0.5"}
    best = max(interp["val"].items(), key=lambda kv: (kv[1]["top1"], float(kv[0])))
    assert interp["chosen_alpha"] == float(best[0]) and results["val_best"] == best[1]
    assert json.loads((run_dir / "results.json").read_text())["interpolation"] == interp

    want = _expected_export(run_dir, results)
    got = load_file(str(run_dir / "export" / "model.safetensors"))
    for key, value in got.items():  # the export is the model without its head, same tensor names
        torch.testing.assert_close(value, want[key].to(value.dtype), rtol=0, atol=1e-6)
    assert "Weight interpolation" in (run_dir / "export" / "README.md").read_text()

    # killed after epoch 1 and resumed: the saved starting weights are read back, the result is the same
    again = tmp_path / "wise_resumed"
    argv = tiny_args(corpus, again, "--interpolate_alphas", "0.25", "0.5")
    _kill_after_first_checkpoint(monkeypatch, argv)
    resumed = train_accelerate.main([*argv, "--resume"])
    assert resumed["interpolation"] == interp and resumed["test"] == results["test"]


def test_backbone_alpha_moves_only_the_backbone_toward_its_start_and_says_so(corpus, tmp_path):
    run_dir = tmp_path / "bb"
    results = train_accelerate.main(tiny_args(corpus, run_dir, "--backbone_alpha", "0.5"))
    bb = results["backbone_interpolation"]
    assert bb["backbone_alpha"] == 0.5 and results["val_best"] == bb["val"] and "test_trained" in bb
    start = load_file(str(run_dir / "start" / "model.safetensors"))
    best = load_file(str(run_dir / "best" / f"epoch_{results['best_epoch']}" / "model.safetensors"))
    got = load_file(str(run_dir / "export" / "model.safetensors"))
    moved = 0
    for key, value in got.items():
        if key.startswith("backbone.") and value.is_floating_point():
            want = torch.lerp(start[key].float(), best[key].float(), 0.5)
            moved += int(not torch.equal(start[key], best[key]))
        else:  # the neck (projection, BatchNorm) is exported as trained
            want = best[key]
        torch.testing.assert_close(value, want.to(value.dtype), rtol=0, atol=1e-6)
    assert moved > 0  # training moved the backbone, so the check above is not trivially true
    assert "fixed in the configuration" in (run_dir / "export" / "README.md").read_text()
    with pytest.raises(ValueError, match="backbone_alpha"):
        parse_config(
            tiny_args(corpus, tmp_path / "x", "--backbone_alpha", "0.5", "--interpolate_alphas", "0.5")
        )
    with pytest.raises(ValueError, match="backbone_alpha"):
        parse_config(tiny_args(corpus, tmp_path / "y", "--backbone_alpha", "1.5"))


def test_test_time_flip_auto_is_chosen_on_validation_and_exported(corpus, tmp_path):
    run_dir = tmp_path / "flip"
    results = train_accelerate.main(tiny_args(corpus, run_dir, "--test_time_flip", "auto"))
    flip = results["test_time_flip"]
    rank = lambda m: (m["top1"], m["mAP"])  # noqa: E731 - the run's metric_for_best is top1
    assert flip["chosen"] == (rank(flip["val_flip"]) > rank(flip["val_plain"]))
    assert results["val_best"] == (flip["val_flip"] if flip["chosen"] else flip["val_plain"])
    assert ("test_plain" in flip) == flip["chosen"]
    export = AutoModel.from_pretrained(run_dir / "export", trust_remote_code=True)
    assert export.config.test_time_flip is flip["chosen"]
    assert "Test-time flip" in (run_dir / "export" / "README.md").read_text()
    assert results["config_summary"]["test_time_flip"] == "auto"


def test_test_time_flip_choices_and_refits(corpus, tmp_path):
    cfg = parse_config(tiny_args(corpus, tmp_path / "on", "--test_time_flip", "on"))
    model, _ = build_model(cfg, 3)
    assert model.config.test_time_flip is True
    off = parse_config(tiny_args(corpus, tmp_path / "off"))
    assert build_model(off, 3)[0].config.test_time_flip is False
    with pytest.raises(ValueError, match="test_time_flip"):
        parse_config(tiny_args(corpus, tmp_path / "bad", "--test_time_flip", "yes"))
    with pytest.raises(ValueError, match="train_on_validation"):
        parse_config(
            tiny_args(corpus, tmp_path / "r", "--train_on_validation", "true", "--test_time_flip", "auto")
        )


def test_interpolate_alphas_must_lie_strictly_between_0_and_1(corpus, tmp_path):
    with pytest.raises(ValueError, match="interpolate_alphas"):
        train_accelerate.main(tiny_args(corpus, tmp_path / "bad", "--interpolate_alphas", "1.0"))


def test_ema_run_trains_the_same_steps_and_keeps_the_averaged_weights(
    base_run, corpus, tmp_path, monkeypatch
):
    """``ema_decay``: the optimiser steps are the base run's, validation and the export use the moving average,
    and a run killed after epoch 1 and resumed ends with the same average."""
    run_dir = tmp_path / "ema"
    results = train_accelerate.main(tiny_args(corpus, run_dir, "--ema_decay", "0.5"))
    base_dir, _ = base_run
    ema_hist, base_hist = _history(run_dir), _history(base_dir)
    assert [h["train_loss"] for h in ema_hist] == [h["train_loss"] for h in base_hist]
    assert results["config_summary"]["ema_decay"] == 0.5
    assert "Weight average" in (run_dir / "export" / "README.md").read_text()
    assert "Weight average" not in (base_dir / "export" / "README.md").read_text()

    # the checkpoint of the best epoch holds the live weights (model.safetensors) and the average (custom 1)
    ckpt = run_dir / "checkpoints" / f"checkpoint_{results['best_epoch'] - 1}"
    average = torch.load(ckpt / "custom_checkpoint_1.pkl", weights_only=False)["shadow"]
    live = load_file(str(ckpt / "model.safetensors"))
    exported = load_file(str(run_dir / "export" / "model.safetensors"))
    for key, value in exported.items():
        torch.testing.assert_close(value, average[key].to(value.dtype), rtol=0, atol=0)
    assert any(not torch.equal(v, live[k]) for k, v in exported.items() if v.is_floating_point())

    again = tmp_path / "ema_resumed"
    argv = tiny_args(corpus, again, "--ema_decay", "0.5")
    _kill_after_first_checkpoint(monkeypatch, argv)
    resumed = train_accelerate.main([*argv, "--resume"])
    _same_run(again, resumed, run_dir, results)
