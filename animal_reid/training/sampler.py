"""Seeded identity-balanced P x K batch sampler (fast-reid / torchreid style), shardable across processes.

Every batch holds P identities and K images of each (images are drawn with replacement only for
identities that have fewer than K). The batches of an epoch are a pure function of ``(seed, epoch)``:
every process builds the same global list and keeps every ``num_replicas``-th batch starting at its
``rank``, so the processes of a DDP run see different whole P x K batches and a resumed run sees the
batches it would have seen.

The sampler does its own sharding: do not pass its DataLoader through ``accelerator.prepare`` (which
would shard the batches a second time); move batches to the device instead. `build_sampler` picks the run's
sampler (`RandomBatchSampler` or `PKBatchSampler`) from its configuration.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
from torch.utils.data import Sampler

if TYPE_CHECKING:
    from accelerate import Accelerator

logger = logging.getLogger(__name__)


class PKBatchSampler(Sampler[list[int]]):
    """Batches of P identities x K images, deterministic given ``seed`` and the epoch.

    Args:
        labels: identity (class index or any hashable) of each dataset row.
        identities_per_batch: P.
        images_per_identity: K.
        seed: base seed; the batches of epoch ``e`` depend only on ``(seed, e)``.
        batches_per_epoch: global batches per epoch (all processes together). Default: number of
            rows // (P*K). Rounded down to a multiple of ``num_replicas`` (at least ``num_replicas``).
        species: species of each row; needed when ``one_species_per_batch`` is true.
        one_species_per_batch: draw all identities of a batch from one species, chosen with probability
            proportional to its number of images (species with a single identity are never chosen).
        num_replicas, rank: the process group this sampler shards for.
    """

    def __init__(
        self,
        labels: Sequence,
        identities_per_batch: int,
        images_per_identity: int,
        seed: int = 0,
        batches_per_epoch: int | None = None,
        species: Sequence[str] | None = None,
        one_species_per_batch: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if identities_per_batch < 1 or images_per_identity < 1:
            raise ValueError(f"P and K must be >= 1, got P={identities_per_batch}, K={images_per_identity}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={num_replicas}), got {rank}")
        if one_species_per_batch and species is None:
            raise ValueError("one_species_per_batch=True needs the species of every row")
        if species is not None and len(species) != len(labels):
            raise ValueError(f"species has {len(species)} entries, labels has {len(labels)}")
        self.P = identities_per_batch
        self.K = images_per_identity
        self.seed = int(seed)
        self.one_species_per_batch = one_species_per_batch
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0

        rows_by_identity: dict = defaultdict(list)
        for row, label in enumerate(labels):
            rows_by_identity[label].append(row)
        # Sorted keys: the order must not depend on hashing or on the order rows were read in.
        self.identities = sorted(rows_by_identity, key=str)
        if len(self.identities) < 2:
            raise ValueError(f"P x K sampling needs at least 2 identities, got {len(self.identities)}")
        self.rows = [np.asarray(rows_by_identity[i], dtype=np.int64) for i in self.identities]

        self.groups: list[np.ndarray]  # identity positions per species group
        self.group_weights: np.ndarray
        if one_species_per_batch:
            by_species: dict[str, list[int]] = defaultdict(list)
            for pos, rows in enumerate(self.rows):
                by_species[str(species[rows[0]])].append(pos)
            keys = sorted(k for k, v in by_species.items() if len(v) >= 2)
            if not keys:
                raise ValueError("one_species_per_batch=True but no species has 2 or more identities")
            dropped = sorted(set(by_species) - set(keys))
            if dropped:
                logger.warning("species with a single identity never form a batch: %s", dropped)
            self.groups = [np.asarray(by_species[k]) for k in keys]
            sizes = np.array([sum(len(self.rows[p]) for p in by_species[k]) for k in keys], dtype=np.float64)
            self.group_weights = sizes / sizes.sum()
        else:
            self.groups = [np.arange(len(self.identities))]
            self.group_weights = np.ones(1)

        total = len(labels) // (self.P * self.K) if batches_per_epoch is None else batches_per_epoch
        total = max(total, num_replicas)
        self.global_batches = total - total % num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.global_batches // self.num_replicas

    def global_epoch_batches(self, epoch: int) -> list[list[int]]:
        """All batches of ``epoch`` (every process's), in order."""
        rng = np.random.default_rng([self.seed, epoch])
        # One shuffled queue of identities per group; refilled (reshuffled) when it runs out, so every
        # identity appears about equally often.
        queues: list[list[int]] = [[] for _ in self.groups]
        batches = []
        for _ in range(self.global_batches):
            g = int(rng.choice(len(self.groups), p=self.group_weights)) if len(self.groups) > 1 else 0
            group = self.groups[g]
            p = min(self.P, len(group))
            chosen: list[int] = []
            while len(chosen) < p:
                if not queues[g]:
                    queues[g] = list(rng.permutation(group))
                ident = int(queues[g].pop())
                if ident not in chosen:
                    chosen.append(ident)
            batch: list[int] = []
            for ident in chosen:
                rows = self.rows[ident]
                if len(rows) >= self.K:
                    picked = rng.choice(rows, size=self.K, replace=False)
                else:  # every image once, the rest repeated at random
                    picked = np.concatenate(
                        [rng.permutation(rows), rng.choice(rows, size=self.K - len(rows))]
                    )
                batch.extend(int(r) for r in picked)
            batches.append(batch)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.global_epoch_batches(self.epoch)
        yield from batches[self.rank :: self.num_replicas]


class RandomBatchSampler(Sampler[list[int]]):
    """Shuffled batches of ``batch_size`` rows, each row once per pass, deterministic given ``(seed, epoch)``.

    The plain-classification alternative to P x K (what the MegaDescriptor-style ArcFace recipes use): no
    identity balancing, so rare identities are seen as often as their images are. Passes over the rows are
    concatenated when ``batches_per_epoch`` asks for more than one pass. Sharded like `PKBatchSampler`.
    """

    def __init__(
        self,
        num_rows: int,
        batch_size: int,
        seed: int = 0,
        batches_per_epoch: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if num_rows < 1 or batch_size < 1:
            raise ValueError(f"need num_rows >= 1 and batch_size >= 1, got {num_rows} and {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={num_replicas}), got {rank}")
        self.num_rows, self.batch_size, self.seed = num_rows, min(batch_size, num_rows), seed
        self.num_replicas, self.rank, self.epoch = num_replicas, rank, 0
        total = num_rows // self.batch_size if batches_per_epoch is None else batches_per_epoch
        total = max(total, num_replicas)
        self.global_batches = total - total % num_replicas

    set_epoch = PKBatchSampler.set_epoch
    __len__ = PKBatchSampler.__len__
    __iter__ = PKBatchSampler.__iter__

    def global_epoch_batches(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch, 1])
        need = self.global_batches * self.batch_size
        order = np.concatenate([rng.permutation(self.num_rows) for _ in range(-(-need // self.num_rows))])
        return [
            order[i * self.batch_size : (i + 1) * self.batch_size].tolist()
            for i in range(self.global_batches)
        ]


def build_sampler(tc, train_meta: dict[str, list], label_of: dict[str, int], accelerator: Accelerator):
    """Random batches of P*K images (default) or identity-balanced P x K batches, sharded over processes."""
    shard = {"num_replicas": accelerator.num_processes, "rank": accelerator.process_index}
    if tc.sampler == "random":
        return RandomBatchSampler(
            len(train_meta["identity"]), tc.batch_size, tc.seed, tc.batches_per_epoch, **shard
        )
    return PKBatchSampler(
        [label_of[i] for i in train_meta["identity"]],
        tc.identities_per_batch,
        tc.images_per_identity,
        seed=tc.seed,
        batches_per_epoch=tc.batches_per_epoch,
        species=train_meta["species"],
        one_species_per_batch=tc.one_species_per_batch,
        **shard,
    )
