"""Seeded splits, identical on every machine, encounter-aware everywhere.

Every random choice goes through :func:`stable_hash` (blake2b of ``seed`` and a key), never Python's
``hash()`` (salted per process) nor a global RNG, so a split depends only on the data and the seed.

Policies, applied per species:

``open``
    Identity-disjoint (zero-shot): whole identities go to train, validation or test. Identities that
    share an encounter are kept together (union-find over identity-encounter links), so no encounter and no
    identity is in two splits. Groups are ordered by hash and filled to the target image fractions.
``closed``
    MegaDescriptor's protocol: every test identity also has training images. Per identity, its encounters are
    ordered by hash and dealt to test / validation / train by the fractions; an identity with a single
    encounter stays in train (it cannot be split without leaking the encounter).
    For species with a benchmark file (``benchmarks/megadescriptor_closed_set/{LionData,NyalaData}.csv``)
    the split reproduces it exactly: benchmark ``test`` (the query set) is ``test``; benchmark ``train`` (the
    database) is ``train`` + ``validation``, where ``validation`` holds, for each identity with at least
    three benchmark-train encounters, the encounters the closed-set rule above would deal to validation
    (and no encounter that also has benchmark-test images). Evaluate against the benchmark with
    train + validation as the database and test as the queries.

``leave_out``: every image of these species goes to ``test``; the other species are split by the policy
with their test fraction folded into validation, so test holds only unseen species.
Per-identity ``cap`` keeps at most that many images per identity (whole encounters first, by hash).
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

POLICIES = ("open", "closed")

# Species whose closed-set split is published: species key -> benchmark file and the source it indexes.
BENCHMARKS: dict[str, tuple[str, str]] = {
    "lion": ("benchmarks/megadescriptor_closed_set/LionData.csv", "liondata"),
    "nyala": ("benchmarks/megadescriptor_closed_set/NyalaData.csv", "nyaladata"),
}


def stable_hash(*parts: object) -> int:
    """A 64-bit hash of ``parts`` that is the same on every machine and every run."""
    key = "\x1f".join(str(p) for p in parts).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


@dataclass(frozen=True)
class SplitConfig:
    policy: str = "open"
    seed: int = 0
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)  # train, validation, test (images)
    cap_per_identity: int | None = None
    leave_out: tuple[str, ...] = ()
    use_benchmarks: bool = True

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"split policy must be one of {POLICIES}, got {self.policy!r}")
        if (
            len(self.fractions) != 3
            or any(f < 0 for f in self.fractions)
            or abs(sum(self.fractions) - 1) > 1e-6
        ):
            raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {self.fractions}")
        if self.cap_per_identity is not None and self.cap_per_identity < 1:
            raise ValueError(f"cap_per_identity must be >= 1, got {self.cap_per_identity}")


@dataclass(frozen=True)
class Item:
    """What a split needs to know about a row."""

    image_id: str
    identity: str
    encounter: str
    species: str
    rel_path: str | None = None  # path relative to the data root, to match benchmark files


def apply_cap(items: Sequence[Item], cap: int | None, seed: int) -> tuple[list[Item], list[Item]]:
    """Keep at most ``cap`` images per identity: whole encounters in hash order, then images in hash order."""
    if cap is None:
        return list(items), []
    by_identity: dict[str, list[Item]] = defaultdict(list)
    for it in items:
        by_identity[it.identity].append(it)
    kept, dropped = [], []
    for _identity, group in by_identity.items():
        if len(group) <= cap:
            kept.extend(group)
            continue
        ordered = sorted(
            group,
            key=lambda it: (
                stable_hash(seed, "cap-enc", it.encounter),
                stable_hash(seed, "cap", it.image_id),
            ),
        )
        kept.extend(ordered[:cap])
        dropped.extend(ordered[cap:])
    return kept, dropped


def _union_find_groups(items: Sequence[Item]) -> list[list[Item]]:
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for it in items:
        a, b = find("i:" + it.identity), find("e:" + it.encounter)
        if a != b:
            parent[a] = b
    groups: dict[str, list[Item]] = defaultdict(list)
    for it in items:
        groups[find("i:" + it.identity)].append(it)
    return list(groups.values())


def _fill(groups: list[list[Item]], fractions: Sequence[float], seed: int, salt: str) -> dict[str, str]:
    """Deal hash-ordered groups to test, validation, then train, each up to its share of the images.

    A group joins the split being filled while the split's count plus half the group stays within the
    split's target; a split with a positive fraction gets at least one group when there are enough groups
    (one is always left for train).
    """
    total = sum(len(g) for g in groups)
    ordered = sorted(groups, key=lambda g: stable_hash(seed, salt, min(it.identity for it in g)))
    out: dict[str, str] = {}
    i = 0
    for split, fraction in (("test", fractions[2]), ("validation", fractions[1])):
        target, have = fraction * total, 0
        while fraction > 0 and i < len(ordered) - 1:
            g = ordered[i]
            if have > 0 and have + len(g) / 2 > target:
                break
            for it in g:
                out[it.image_id] = split
            have += len(g)
            i += 1
    for g in ordered[i:]:
        for it in g:
            out[it.image_id] = "train"
    return out


def open_set(items: Sequence[Item], fractions: Sequence[float], seed: int) -> dict[str, str]:
    return _fill(_union_find_groups(items), fractions, seed, "open")


def _deal_encounters(n: int, fractions: Sequence[float]) -> tuple[int, int]:
    """How many of an identity's ``n`` encounters go to (test, validation)."""
    if n < 2:
        return 0, 0
    n_test = max(1, round(n * fractions[2])) if fractions[2] > 0 else 0
    n_val = round(n * fractions[1]) if fractions[1] > 0 else 0
    if n >= 3 and fractions[1] > 0:
        n_val = max(1, n_val)
    while n_test + n_val >= n:  # at least one encounter stays in train
        if n_val > 0:
            n_val -= 1
        else:
            n_test -= 1
    return n_test, n_val


def closed_set(items: Sequence[Item], fractions: Sequence[float], seed: int) -> dict[str, str]:
    by_identity: dict[str, list[Item]] = defaultdict(list)
    for it in items:
        by_identity[it.identity].append(it)
    enc_split: dict[str, str] = {}
    for identity in sorted(by_identity, key=lambda i: stable_hash(seed, "closed-id", i)):
        encounters = sorted(
            {it.encounter for it in by_identity[identity]}, key=lambda e: stable_hash(seed, "closed", e)
        )
        free = [
            e for e in encounters if e not in enc_split
        ]  # an encounter shared with another identity keeps its split
        n_test, n_val = _deal_encounters(len(free), fractions)
        for i, enc in enumerate(free):
            enc_split[enc] = "test" if i < n_test else "validation" if i < n_test + n_val else "train"
    return {it.image_id: enc_split[it.encounter] for it in items}


def read_benchmark(path: Path) -> dict[str, str]:
    """``{path relative to the data root: "train"|"test"}`` from a MegaDescriptor split file."""
    with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: a file saved by Excel starts with a BOM
        rows = list(csv.DictReader(fh))
    for col in ("path", "split"):
        if rows and col not in rows[0]:
            raise ValueError(
                f"{path}: expected columns image_id, identity, path, split; got {sorted(rows[0])}"
            )
    return {row["path"]: row["split"] for row in rows}


def benchmark_closed_set(
    items: Sequence[Item], benchmark: dict[str, str], fractions: Sequence[float], seed: int
) -> tuple[dict[str, str], dict[str, int]]:
    """Reproduce a benchmark's train/test exactly; carve validation out of its train (see module doc)."""
    out: dict[str, str] = {}
    stats = Counter()
    test_encounters = set()
    for it in items:
        split = benchmark.get(it.rel_path or "")
        if split == "test":
            test_encounters.add(it.encounter)
    train_items: list[Item] = []
    for it in items:
        split = benchmark.get(it.rel_path or "")
        if split is None:
            stats["images not in the benchmark file (train)"] += 1
            out[it.image_id] = "train"
        elif split == "test":
            out[it.image_id] = "test"
        elif split == "train":
            out[it.image_id] = "train"
            if it.encounter not in test_encounters:
                train_items.append(it)
        else:
            raise ValueError(f"benchmark split for {it.rel_path} must be 'train' or 'test', got {split!r}")
    by_identity: dict[str, list[Item]] = defaultdict(list)
    for it in train_items:
        by_identity[it.identity].append(it)
    val_fraction = fractions[1] / max(fractions[0] + fractions[1], 1e-9)
    for _identity, group in by_identity.items():
        encounters = sorted({it.encounter for it in group}, key=lambda e: stable_hash(seed, "bench-val", e))
        if len(encounters) < 3:
            continue
        n_val = max(1, round(len(encounters) * val_fraction))
        chosen = set(encounters[:n_val])
        for it in group:
            if it.encounter in chosen:
                out[it.image_id] = "validation"
    straddling = defaultdict(set)
    for it in items:
        straddling[it.encounter].add(benchmark.get(it.rel_path or "", "train"))
    stats["benchmark encounters in both train and test"] = sum(1 for s in straddling.values() if len(s) > 1)
    return out, dict(stats)


def assign_splits(
    items: Sequence[Item], config: SplitConfig, data_root: Path | None = None
) -> tuple[dict[str, str], dict]:
    """Split every item; return ``{image_id: split}`` and notes for the build report (per species)."""
    by_species: dict[str, list[Item]] = defaultdict(list)
    for it in items:
        by_species[it.species].append(it)
    unknown = set(config.leave_out) - set(by_species)
    if unknown:
        logger.warning("leave-out species not in the corpus: %s", sorted(unknown))
    out: dict[str, str] = {}
    notes: dict[str, dict] = {}
    for species, group in sorted(by_species.items()):
        if species in config.leave_out:
            out.update({it.image_id: "test" for it in group})
            notes[species] = {"policy": "left out (all test)"}
            continue
        fractions = list(config.fractions)
        if config.leave_out:
            fractions = [fractions[0], fractions[1] + fractions[2], 0.0]
        bench = BENCHMARKS.get(species)
        if config.policy == "closed" and config.use_benchmarks and bench and data_root is not None:
            bench_path = Path(data_root) / bench[0]
            if bench_path.exists() and any(it.rel_path for it in group):
                split, stats = benchmark_closed_set(group, read_benchmark(bench_path), fractions, config.seed)
                if config.leave_out:  # benchmark test is folded into validation like the other species'
                    split = {k: "validation" if v == "test" else v for k, v in split.items()}
                out.update(split)
                notes[species] = {"policy": f"closed (benchmark {bench[0]})", **stats}
                continue
        seed = stable_hash(config.seed, species)  # independent per species
        out.update(
            closed_set(group, fractions, seed)
            if config.policy == "closed"
            else open_set(group, fractions, seed)
        )
        notes[species] = {"policy": config.policy}
    return out, notes


def check_disjoint(rows: Sequence[tuple[str, str, str]]) -> dict[str, int]:
    """Count identities and encounters found in more than one split; rows are (identity, encounter, split)."""
    ids, encs = defaultdict(set), defaultdict(set)
    for identity, encounter, split in rows:
        ids[identity].add(split)
        encs[encounter].add(split)
    return {
        "identities_in_several_splits": sum(1 for s in ids.values() if len(s) > 1),
        "encounters_in_several_splits": sum(1 for s in encs.values() if len(s) > 1),
    }
