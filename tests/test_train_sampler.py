"""P x K sampler, augmentation seeding, learning-rate schedule."""

import math
from collections import Counter

import numpy as np
import pytest
import torch

from animal_reid.training.augment import ReIDAugment
from animal_reid.training.data import SeededBatches, sample_seed
from animal_reid.training.sampler import PKBatchSampler
from animal_reid.training.schedule import WarmupCosine, build_scheduler


def _labels(n_ids=20, per_id=(1, 9), seed=0):
    rng = np.random.default_rng(seed)
    labels, species = [], []
    for i in range(n_ids):
        n = int(rng.integers(*per_id))
        labels += [i] * n
        species += ["a" if i % 3 else "b"] * n
    order = rng.permutation(len(labels))  # rows of one identity are not contiguous
    return [labels[j] for j in order], [species[j] for j in order]


def test_batches_are_p_identities_times_k_images():
    labels, _ = _labels()
    s = PKBatchSampler(labels, identities_per_batch=4, images_per_identity=3, seed=1, batches_per_epoch=10)
    batches = list(s)
    assert len(batches) == len(s) == 10
    for b in batches:
        assert len(b) == 12
        counts = Counter(labels[i] for i in b)
        assert len(counts) == 4 and set(counts.values()) == {3}
    # identities with fewer than K images: all of them used, the rest repeated
    single = [i for i, lab in enumerate(labels) if Counter(labels)[lab] == 1]
    for b in batches:
        for row in set(b) & set(single):
            assert b.count(row) == 3


def test_every_image_of_an_identity_with_enough_images_is_distinct():
    labels, _ = _labels(per_id=(5, 9))
    s = PKBatchSampler(labels, 4, 4, seed=3, batches_per_epoch=6)
    for b in s:
        assert len(set(b)) == len(b)


def test_deterministic_given_seed_and_epoch():
    labels, _ = _labels()
    a = PKBatchSampler(labels, 4, 2, seed=7, batches_per_epoch=8)
    b = PKBatchSampler(labels, 4, 2, seed=7, batches_per_epoch=8)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    b.set_epoch(4)
    assert list(a) != list(b)
    c = PKBatchSampler(labels, 4, 2, seed=8, batches_per_epoch=8)
    c.set_epoch(3)
    assert list(a) != list(c)


def test_identities_are_balanced_over_an_epoch():
    labels, _ = _labels(n_ids=12)
    s = PKBatchSampler(labels, 4, 2, seed=0, batches_per_epoch=30)  # 120 identity slots for 12 identities
    seen = Counter(labels[b[j]] for b in s for j in range(0, 8, 2))
    assert set(seen) == set(range(12))
    assert max(seen.values()) - min(seen.values()) <= 2


@pytest.mark.parametrize("replicas", [2, 3])
def test_ddp_shards_are_disjoint_whole_batches(replicas):
    labels, _ = _labels()
    single = PKBatchSampler(labels, 4, 2, seed=5, batches_per_epoch=12)
    single.set_epoch(2)
    reference = list(single)
    shards = []
    for rank in range(replicas):
        s = PKBatchSampler(labels, 4, 2, seed=5, batches_per_epoch=12, num_replicas=replicas, rank=rank)
        s.set_epoch(2)
        shards.append(list(s))
        assert len(shards[-1]) == len(s) == 12 // replicas
    as_tuples = [[tuple(b) for b in shard] for shard in shards]
    for i in range(replicas):
        for j in range(i + 1, replicas):
            assert not set(as_tuples[i]) & set(as_tuples[j]), "two ranks got the same batch"
    # together they are exactly the single-process epoch, rank r taking batches r, r + n, ...
    merged = [shards[r][k] for k in range(12 // replicas) for r in range(replicas)]
    assert merged == reference


def test_batches_per_epoch_rounds_to_a_multiple_of_replicas():
    labels, _ = _labels()
    s = PKBatchSampler(labels, 4, 2, seed=0, batches_per_epoch=7, num_replicas=3, rank=1)
    assert s.global_batches == 6 and len(s) == 2


def test_one_species_per_batch():
    labels, species = _labels(n_ids=30)
    s = PKBatchSampler(
        labels, 4, 2, seed=0, batches_per_epoch=20, species=species, one_species_per_batch=True
    )
    kinds = set()
    for b in s:
        sp = {species[i] for i in b}
        assert len(sp) == 1
        kinds |= sp
    assert kinds == {"a", "b"}
    with pytest.raises(ValueError, match="species of every row"):
        PKBatchSampler(labels, 4, 2, one_species_per_batch=True)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="at least 2 identities"):
        PKBatchSampler([0, 0, 0], 2, 2)
    with pytest.raises(ValueError, match="rank must be in"):
        PKBatchSampler([0, 1], 2, 2, num_replicas=2, rank=2)


def test_seeded_batches_give_each_sample_a_stable_seed():
    labels, _ = _labels()
    s = PKBatchSampler(labels, 4, 2, seed=0, batches_per_epoch=4)
    wrapped = SeededBatches(s, seed=11)
    wrapped.set_epoch(1)
    first = list(wrapped)
    again = list(SeededBatches(PKBatchSampler(labels, 4, 2, seed=0, batches_per_epoch=4), seed=11))
    assert first != again  # epoch 0 vs epoch 1
    wrapped.set_epoch(1)
    assert list(wrapped) == first
    seeds = [seed for batch in first for _, seed in batch]
    assert len(set(seeds)) == len(seeds)
    assert first[0][0][1] == sample_seed(11, 1, 0)
    # the seed of a global batch does not depend on which rank draws it
    r1 = SeededBatches(
        PKBatchSampler(labels, 4, 2, seed=0, batches_per_epoch=4, num_replicas=2, rank=1), seed=11
    )
    r1.set_epoch(1)
    assert list(r1)[0] == first[1]


def test_augment_is_seeded_keeps_shape_and_never_flips_by_default():
    aug = ReIDAugment([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    x = torch.randint(0, 256, (3, 48, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    y1 = aug(x, torch.Generator().manual_seed(3))
    y2 = aug(x, torch.Generator().manual_seed(3))
    y3 = aug(x, torch.Generator().manual_seed(4))
    assert y1.shape == x.shape and y1.dtype == torch.uint8
    assert torch.equal(y1, y2) and not torch.equal(y1, y3)
    # no flip: with geometry and photometry off, a left-right asymmetric image comes back unchanged (exactly:
    # the uint8 -> float -> uint8 round trip is lossless)
    still = ReIDAugment(
        [0.5] * 3,
        [0.5] * 3,
        crop_scale=(1.0, 1.0),
        rotation_deg=0,
        brightness=0,
        contrast=0,
        saturation=0,
        erase_prob=0,
    )
    ramp = torch.linspace(0, 255, 40).round().to(torch.uint8).expand(3, 48, 40).clone()
    for s in range(20):
        assert torch.equal(still(ramp, torch.Generator().manual_seed(s)), ramp)
    flipping = ReIDAugment(
        [0.5] * 3,
        [0.5] * 3,
        crop_scale=(1.0, 1.0),
        rotation_deg=0,
        brightness=0,
        contrast=0,
        saturation=0,
        erase_prob=0,
        hflip=True,
    )
    outs = [flipping(ramp, torch.Generator().manual_seed(s)) for s in range(20)]
    assert any(torch.equal(o, ramp.flip(-1)) for o in outs)
    assert any(torch.equal(o, ramp) for o in outs)
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        aug(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.Generator())
    with pytest.raises(TypeError, match="uint8"):  # a normalised float tensor is refused, not misread
        aug(torch.zeros(3, 8, 8), torch.Generator())


def test_augment_fills_with_the_mean_colour():
    """Rotation corners and erased rectangles take the processor's mean colour (zero once normalised)."""
    mean = [0.485, 0.456, 0.406]
    grey = torch.tensor([round(255 * m) for m in mean], dtype=torch.uint8).view(3, 1, 1)
    white = torch.full((3, 64, 64), 255, dtype=torch.uint8)
    off = {"crop_scale": (1.0, 1.0), "brightness": 0, "contrast": 0, "saturation": 0}
    rotating = ReIDAugment(mean, [0.229, 0.224, 0.225], rotation_deg=10, erase_prob=0, **off)
    corners = [rotating(white, torch.Generator().manual_seed(s))[:, 0, 0] for s in range(10)]
    assert any(torch.equal(c, grey.view(3)) for c in corners)
    erasing = ReIDAugment(mean, [0.229, 0.224, 0.225], rotation_deg=0, erase_prob=1.0, **off)
    out = erasing(white, torch.Generator().manual_seed(0))
    erased = (out != 255).all(0)
    assert 0.02 * 64 * 64 * 0.9 <= int(erased.sum()) <= 0.2 * 64 * 64 * 1.1
    assert torch.equal(out[:, erased], grey.view(3, 1).expand(3, int(erased.sum())))


def test_warmup_then_cosine():
    curve = WarmupCosine(warmup_steps=4, total_steps=14, min_ratio=0.1)
    values = [curve(s) for s in range(15)]
    assert values[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert values[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[4:], values[5:], strict=False))
    assert values[9] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert values[14] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupCosine(5, 4)


def test_scheduler_keeps_separate_peaks_and_survives_state_dict():
    p1, p2 = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [p1], "lr": 1e-4}, {"params": [p2], "lr": 1e-3}])
    sched = build_scheduler(opt, warmup_steps=2, total_steps=10, min_ratio=0.0)
    for _ in range(3):
        opt.step()
        sched.step()
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs[1] == pytest.approx(10 * lrs[0])
    opt2 = torch.optim.AdamW([{"params": [p1], "lr": 1e-4}, {"params": [p2], "lr": 1e-3}])
    sched2 = build_scheduler(opt2, warmup_steps=2, total_steps=10, min_ratio=0.0)
    sched2.load_state_dict(sched.state_dict())
    opt.step()
    sched.step()
    opt2.step()
    sched2.step()
    assert sched2.get_last_lr() == pytest.approx(sched.get_last_lr())
