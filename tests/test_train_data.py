"""ReIDImageDataset and its DataLoader: uint8 batches from (persistent) workers, normalised by the processor."""

import os

import pytest
import torch
from torch.utils.data import DataLoader

from animal_reid.training.augment import ReIDAugment
from animal_reid.training.config import parse_config
from animal_reid.training.data import (
    ReIDImageDataset,
    SeededBatches,
    collate,
    dataloader_kwargs,
    load_corpus,
    release_workers,
)
from animal_reid.training.sampler import PKBatchSampler
from modeling import AnimalReIDImageProcessor


@pytest.fixture(scope="module")
def corpus(tiny_corpus):
    return load_corpus(parse_config(["--corpus", str(tiny_corpus)]).data, seed=0)


@pytest.fixture(scope="module")
def processor():
    return AnimalReIDImageProcessor(size={"height": 48, "width": 40})


def _augment(processor) -> ReIDAugment:
    return ReIDAugment(processor.image_mean, processor.image_std, erase_prob=0.5)


def test_items_are_uint8_and_normalise_to_preprocess_one(corpus, processor):
    """normalize_uint8(dataset[i]) is exactly the single preprocessing path (preprocess_one) of the row."""
    split = corpus.splits["validation"]
    ds = ReIDImageDataset(split, processor, corpus.label_of)
    assert "bbox" in split.column_names and "theta" in split.column_names  # the box path is exercised
    items = [ds[i] for i in range(len(ds))]
    for item in items:
        assert item["pixel_values"].dtype == torch.uint8 and item["pixel_values"].shape == (3, 48, 40)
    expected = torch.stack(
        [
            processor.preprocess_one(row["image"], row["bbox"], float(row["theta"] or 0.0))
            for row in (split[i] for i in range(len(split)))
        ]
    )
    batch = collate(items)
    assert batch["pixel_values"].dtype == torch.uint8 and batch["pixel_values"].shape == (len(ds), 3, 48, 40)
    assert torch.equal(processor.normalize_uint8(batch["pixel_values"]), expected)
    assert batch["index"].tolist() == list(range(len(ds)))
    # through a DataLoader with a worker as well
    loader = DataLoader(ds, batch_size=5, **dataloader_kwargs(1, persistent_workers=False))
    got = torch.cat([processor.normalize_uint8(b["pixel_values"]) for b in loader])
    assert torch.equal(got, expected)


def test_augmented_items_are_seeded_uint8(corpus, processor):
    plain = ReIDImageDataset(corpus.splits["train"], processor, corpus.label_of)
    ds = ReIDImageDataset(corpus.splits["train"], processor, corpus.label_of, _augment(processor))
    a, b, c = ds[(3, 123)], ds[(3, 123)], ds[(3, 124)]
    assert a["pixel_values"].dtype == torch.uint8 and a["pixel_values"].shape == (3, 48, 40)
    assert torch.equal(a["pixel_values"], b["pixel_values"])
    assert not torch.equal(a["pixel_values"], c["pixel_values"])
    assert not torch.equal(a["pixel_values"], plain[3]["pixel_values"])
    assert torch.equal(ds[3]["pixel_values"], plain[3]["pixel_values"])  # no seed: no augmentation
    assert a["labels"] == corpus.label_of[corpus.splits["train"][3]["identity"]] >= 0


def _epochs(loader, sampler, epochs, stop_early=False):
    """Batches of each epoch; with ``stop_early``, epoch 0 is first abandoned after one batch (as the loop may)."""
    out = []
    if stop_early:
        sampler.set_epoch(0)
        next(iter(loader))
    for epoch in epochs:
        sampler.set_epoch(epoch)
        out.append(list(loader))
    return out


def test_persistent_workers_give_the_batches_of_fresh_ones(corpus, processor):
    train = corpus.splits["train"]
    ds = ReIDImageDataset(train, processor, corpus.label_of, _augment(processor))
    labels = [corpus.label_of[i] for i in train["identity"]]

    def seeded() -> SeededBatches:
        return SeededBatches(PKBatchSampler(labels, 3, 2, seed=5, batches_per_epoch=4), seed=7)

    sampler = seeded()
    persistent = DataLoader(ds, batch_sampler=sampler, **dataloader_kwargs(2, prefetch_factor=3))
    assert persistent.persistent_workers
    try:
        kept = _epochs(persistent, sampler, [0, 1], stop_early=True)
        first = persistent._iterator
        pids = [w.pid for w in first._workers]
        assert iter(persistent) is first  # the same iterator and workers every epoch
        assert all(w.is_alive() for w in first._workers)
    finally:
        release_workers(persistent)
    assert persistent._iterator is None
    for pid in pids:  # the workers are gone (reaped, or at least no longer running)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        with open(f"/proc/{pid}/stat") as fh:
            assert fh.read().split(")")[-1].split()[0] in ("Z", "X")

    fresh = []
    for epoch in (0, 1):  # a new loader (new workers) per epoch, and decoding in-process
        for workers in (1, 0):
            s = seeded()
            s.set_epoch(epoch)
            loader = DataLoader(ds, batch_sampler=s, **dataloader_kwargs(workers, persistent_workers=False))
            fresh.append((epoch, workers, list(loader)))
    for epoch, _, batches in fresh:
        assert len(batches) == len(kept[epoch]) == 4
        for got, want in zip(kept[epoch], batches, strict=True):
            assert got["pixel_values"].dtype == torch.uint8
            for key in ("pixel_values", "labels", "index"):
                assert torch.equal(got[key], want[key]), (epoch, key)
    assert not torch.equal(kept[0][0]["index"], kept[1][0]["index"])  # set_epoch reached the workers' input


def test_dataloader_kwargs():
    none = dataloader_kwargs(0)
    assert none["num_workers"] == 0 and "persistent_workers" not in none and "prefetch_factor" not in none
    assert none["pin_memory"] is False and none["collate_fn"] is collate
    kw = dataloader_kwargs(3, seed=4, pin_memory=True, prefetch_factor=4)
    assert kw["persistent_workers"] is True and kw["prefetch_factor"] == 4 and kw["pin_memory"] is True
    # the loader's own generator: iterating it leaves the global RNG alone
    assert torch.equal(kw["generator"].get_state(), torch.Generator().manual_seed(4).get_state())
    state = torch.get_rng_state()
    iter(DataLoader(range(4), **dataloader_kwargs(0)))
    assert torch.equal(torch.get_rng_state(), state)


def test_cap_per_species_keeps_whole_identities_up_to_the_cap():
    from animal_reid.training.data import cap_per_species

    identities = [f"d{i // 4}" for i in range(40)] + [f"c{i // 2}" for i in range(6)]  # dog: 10 x 4, cat: 3 x 2
    species = ["dog"] * 40 + ["cat"] * 6
    keep = cap_per_species(identities, species, cap=10, seed=0)
    kept_dogs = [identities[i] for i in keep if species[i] == "dog"]
    assert len(kept_dogs) == 8 and all(kept_dogs.count(d) == 4 for d in set(kept_dogs))  # two whole dogs (8 <= 10)
    assert [i for i in keep if species[i] == "cat"] == list(range(40, 46))  # under the cap: all kept
    assert keep == sorted(keep)
    assert keep == cap_per_species(identities, species, cap=10, seed=0)  # seeded
    assert keep != cap_per_species(identities, species, cap=10, seed=1)
