"""The synthetic source: deterministic, flanks and individuals differ, encounters share conditions, learnable."""

import io

import numpy as np
import pytest
from PIL import Image

from data_scripts.sources.synthetic import (
    PATTERNS,
    Synthetic,
    SyntheticConfig,
    _rng,
    coat,
    encounter_conditions,
    generate,
)

SMALL = SyntheticConfig(
    identities_per_species=3, images_per_identity=4, encounters_per_identity=2, image_size=48
)


def _pixels(data: bytes, size=24) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((size, size)), np.float32).ravel()


def test_generation_is_deterministic_and_parallel_safe():
    a = list(generate(SMALL, workers=1))
    b = list(generate(SMALL, workers=2))
    assert a == b and len(a) == len(PATTERNS) * 3 * 4
    c = list(generate(SyntheticConfig(**{**SMALL.__dict__, "seed": 1}), workers=1))
    assert [x[-1] for x in a] != [x[-1] for x in c]
    im = Image.open(io.BytesIO(a[0][-1]))
    assert im.format == "JPEG" and im.size == (48, 48)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_flanks_and_individuals_differ(pattern):
    left0, right0 = coat(pattern, _rng(0, pattern, 0, "left")), coat(pattern, _rng(0, pattern, 0, "right"))
    left1 = coat(pattern, _rng(0, pattern, 1, "left"))
    assert left0.shape == (128, 192, 3) and 0 <= left0.min() and left0.max() <= 255
    assert np.abs(left0 - right0).mean() > 10 and np.abs(left0 - left1).mean() > 10
    assert np.array_equal(left0, coat(pattern, _rng(0, pattern, 0, "left")))


def test_records_have_schema_fields_and_encounters(tmp_path):
    recs = list(Synthetic(SMALL, workers=1).records(tmp_path))
    assert len({r.image_id for r in recs}) == len(recs)
    stripes = [r for r in recs if r.species == "synth_stripes"]
    assert {r.identity for r in stripes} == {f"synthetic:synth_stripes:{i:04d}" for i in range(3)}
    per_identity = {}
    for r in stripes:
        per_identity.setdefault(r.identity, set()).add(r.encounter)
    assert all(len(e) == 2 for e in per_identity.values())
    assert {r.viewpoint for r in recs} == {"left", "right"}
    # an encounter's conditions are a function of the encounter alone
    a = encounter_conditions(_rng(0, "stripes", 0, "encounter", 0), 48)
    b = encounter_conditions(_rng(0, "stripes", 0, "encounter", 0), 48)
    assert np.array_equal(a["background"], b["background"]) and a["gain"] == b["gain"]


def test_not_trivial_raw_pixels_do_not_match_across_encounters():
    cfg = SyntheticConfig(
        patterns=("spots",),
        identities_per_species=12,
        images_per_identity=6,
        encounters_per_identity=3,
        image_size=64,
    )
    photos = list(generate(cfg, workers=1))
    x = np.stack([_pixels(p[-1]) for p in photos])
    x = (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-6)
    ids, encs = [p[1] for p in photos], [p[2] for p in photos]
    sim = x @ x.T
    hits = total = 0
    for i in range(len(photos)):
        s = sim[i].copy()
        s[[j for j in range(len(photos)) if encs[j] == encs[i]]] = -np.inf  # other encounters only
        hits += ids[int(s.argmax())] == ids[i]
        total += 1
    assert hits / total < 0.3  # chance is 1/12; pixels alone should stay near it


def test_config_validates():
    with pytest.raises(ValueError, match="patterns must be among"):
        SyntheticConfig(patterns=("plaid",))
    with pytest.raises(ValueError, match="identities_per_species must be >= 1"):
        SyntheticConfig(identities_per_species=0)


@pytest.mark.slow
def test_tiny_cnn_learns_identities_on_unseen_individuals(tmp_path, request):
    """Open-set: train a 4-layer CNN on training identities; kNN on test identities beats chance by far."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    torch.set_num_threads(2)
    cfg = SyntheticConfig(identities_per_species=30, images_per_identity=8, encounters_per_identity=4)
    photos = list(generate(cfg, workers=2))
    ids = sorted({(p[0], p[1]) for p in photos})
    test_ids = set(ids[::5])  # every 5th individual is never seen in training

    def tensor(items):
        arr = np.stack(
            [np.asarray(Image.open(io.BytesIO(p[-1])).convert("RGB").resize((64, 64))) for p in items]
        )
        return torch.tensor(arr).permute(0, 3, 1, 2).float() / 255

    train = [p for p in photos if (p[0], p[1]) not in test_ids]
    test = [p for p in photos if (p[0], p[1]) in test_ids]
    classes = sorted({(p[0], p[1]) for p in train})
    xtr, ytr = tensor(train), torch.tensor([classes.index((p[0], p[1])) for p in train])
    xte = tensor(test)
    net = torch.nn.Sequential(
        *[
            m
            for c_in, c_out in ((3, 32), (32, 64), (64, 128))
            for m in (
                torch.nn.Conv2d(c_in, c_out, 3, padding=1),
                torch.nn.BatchNorm2d(c_out),
                torch.nn.ReLU(),
                torch.nn.MaxPool2d(2),
            )
        ],
        torch.nn.Conv2d(128, 128, 3, padding=1),
        torch.nn.BatchNorm2d(128),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(128, 128),
    )
    head = torch.nn.Linear(128, len(classes))
    opt = torch.optim.AdamW([*net.parameters(), *head.parameters()], 3e-3, weight_decay=1e-4)
    for _ in range(25):
        net.train()
        for idx in torch.randperm(len(xtr)).split(64):
            x = xtr[idx] * (0.8 + 0.4 * torch.rand(len(idx), 3, 1, 1))
            i0, j0 = (int(v) for v in torch.randint(0, 9, (2,)))
            x = F.pad(x, (4, 4, 4, 4), mode="replicate")[:, :, i0 : i0 + 64, j0 : j0 + 64]
            loss = F.cross_entropy(head(F.normalize(net(x), dim=1) * 16), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        emb = F.normalize(net(xte), dim=1)
    sim = emb @ emb.T
    labels = [(p[0], p[1]) for p in test]
    encs = [(p[0], p[2]) for p in test]
    hits = 0
    for i in range(len(test)):
        s = sim[i].clone()
        s[[j for j in range(len(test)) if encs[j] == encs[i]]] = -9  # match across encounters only
        hits += labels[int(s.argmax())] == labels[i]
    chance = 1 / len(test_ids)
    assert hits / len(test) > 3 * chance
