"""push_to_hub of a built corpus, and load_dataset of each config back, against the local Hub emulator."""

import json

import pytest

pytest.importorskip("datasets")
hub_emulator = pytest.importorskip("animal_reid.testing.hub_emulator")


def test_push_built_corpus_and_load_configs_back(tmp_path, repo_root):
    out = tmp_path / "corpus"
    code = r"""
import json, sys
from datasets import load_dataset
from data_scripts.build import main
result = main(["--sources", "synthetic", "--out", sys.argv[1], "--synthetic-identities", "6", "--synthetic-images", "4",
               "--synthetic-patterns", "stripes", "patches", "--synthetic-size", "48", "--workers", "1",
               "--no-progress", "--push-to-hub", "alice/reid-corpus"])
back = {}
for config in ("all", "synth_stripes", "synth_patches"):
    ds = load_dataset("alice/reid-corpus", config)
    back[config] = {split: [len(ds[split]), len(set(ds[split]["identity"]))] for split in ds}
row = load_dataset("alice/reid-corpus", "synth_patches", split="train")[0]
print(json.dumps({"back": back, "counts": result.counts, "image_size": list(row["image"].size),
                  "identity": row["identity"]}))
"""
    with hub_emulator.HubEmulator(tmp_path / "hub") as hub:
        proc = hub.run_python(code, str(out), cwd=str(repo_root), timeout=240)
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
    counts = summary["counts"]
    for config, splits in summary["back"].items():
        assert splits == {s: [counts[config][s]["images"], counts[config][s]["identities"]] for s in splits}
        assert sum(n for n, _ in splits.values()) == counts[config]["images"]
    assert counts["all"]["images"] == 48
    assert summary["image_size"] == [48, 48] and summary["identity"].startswith("synthetic:synth_patches:")
