"""The in-memory search index over the catalogue's sightings, one ``GalleryIndex`` per species.

It is rebuilt from the store at start and then follows every committed change (add, delete, merge; and, through
:meth:`CatalogueIndex.apply`, what other replicas changed) under one lock; a species' ``GalleryIndex`` is
rebuilt lazily, on the next search after a change.
"""

from __future__ import annotations

import threading

import numpy as np

from animal_reid.search import GalleryIndex
from animal_reid.serve.store import IndexRows


class _Species:
    def __init__(self, dim: int):
        self.sighting_ids = np.zeros(0, np.int64)
        self.individual_ids = np.zeros(0, np.int64)
        self.embeddings = np.zeros((0, dim), np.float32)
        self.gallery: GalleryIndex | None = None

    def add(self, sighting_id: int, individual_id: int, emb: np.ndarray) -> None:
        self.extend([sighting_id], [individual_id], [emb])

    def extend(self, sighting_ids: list[int], individual_ids: list[int], embs: list[np.ndarray]) -> None:
        self.sighting_ids = np.append(self.sighting_ids, np.asarray(sighting_ids, np.int64))
        self.individual_ids = np.append(self.individual_ids, np.asarray(individual_ids, np.int64))
        rows = [e.reshape(1, -1).astype(np.float32) for e in embs]
        self.embeddings = np.vstack([self.embeddings, *rows])
        self.gallery = None

    def keep(self, mask: np.ndarray) -> None:
        self.sighting_ids, self.individual_ids = self.sighting_ids[mask], self.individual_ids[mask]
        self.embeddings = self.embeddings[mask]
        self.gallery = None

    def search(self, query: np.ndarray, k: int, method: str) -> tuple[np.ndarray, np.ndarray]:
        if self.gallery is None:
            self.gallery = GalleryIndex.build(self.embeddings, method=method)
        scores, idx = self.gallery.search(query.reshape(1, -1), min(k, len(self.sighting_ids)))
        keep = idx[0] >= 0
        return scores[0][keep], idx[0][keep]


class CatalogueIndex:
    """Sighting embeddings grouped by species; ``search`` ranks individuals by their best-matching sighting."""

    def __init__(self, dim: int, method: str = "auto"):
        self.dim = dim
        self.method = method
        self._lock = threading.Lock()
        self._species: dict[str, _Species] = {}

    @classmethod
    def from_rows(cls, rows: IndexRows, dim: int, method: str = "auto") -> CatalogueIndex:
        index = cls(dim, method)
        index.apply(add=zip(rows.sighting_ids.tolist(), rows.individual_ids.tolist(), rows.species,
                            rows.embeddings, strict=True))  # fmt: skip
        return index

    def __len__(self) -> int:
        with self._lock:
            return sum(len(s.sighting_ids) for s in self._species.values())

    def sighting_pairs(self) -> list[tuple[int, int]]:
        """(sighting id, individual id) of every indexed sighting, in id order."""
        with self._lock:
            pairs = [
                (int(a), int(b))
                for s in self._species.values()
                for a, b in zip(s.sighting_ids, s.individual_ids, strict=True)
            ]
        return sorted(pairs)

    def entries(self) -> dict[int, tuple[int, str]]:
        """{sighting id: (individual id, species)} of every indexed sighting."""
        with self._lock:
            return {
                int(sid): (int(iid), name)
                for name, sp in self._species.items()
                for sid, iid in zip(sp.sighting_ids.tolist(), sp.individual_ids.tolist(), strict=True)
            }

    def apply(self, remove=(), moves: dict[int, tuple[int, str]] | None = None, add=()) -> None:
        """Several changes under one lock: drop the sightings ``remove``; give those in ``moves`` their new
        (individual, species), their embedding moving between species if need be; then ``add`` the rows
        ``(sighting id, individual id, species, embedding)``."""
        moves = moves or {}
        add = list(add)
        for sid, _iid, _sp, emb in add:
            if emb.size != self.dim:
                raise ValueError(f"sighting {sid} has a {emb.size}-d embedding, the index is {self.dim}-d")
        with self._lock:
            gone, moved = set(remove), []
            for name, sp in self._species.items():
                if not len(sp.sighting_ids):
                    continue
                hit = np.isin(sp.sighting_ids, list(gone | moves.keys()))
                for i in np.flatnonzero(hit):
                    sid = int(sp.sighting_ids[i])
                    if sid in moves and moves[sid][1] == name:
                        sp.individual_ids[i] = moves[sid][0]
                        sp.gallery = None
                        hit[i] = False
                    elif sid in moves:
                        moved.append((sid, *moves[sid], sp.embeddings[i].copy()))
                if hit.any():
                    sp.keep(~hit)
            by_species: dict[str, list] = {}
            for row in moved + add:
                by_species.setdefault(row[2], []).append(row)
            for name, rows in by_species.items():
                sids, iids, _, embs = zip(*rows, strict=True)
                self._species.setdefault(name, _Species(self.dim)).extend(list(sids), list(iids), list(embs))

    def has_sightings_of(self, species: str) -> bool:
        with self._lock:
            sp = self._species.get(species)
            return sp is not None and len(sp.sighting_ids) > 0

    def add(self, sighting_id: int, individual_id: int, species: str, embedding: np.ndarray) -> None:
        if embedding.size != self.dim:
            raise ValueError(
                f"sighting {sighting_id} has a {embedding.size}-d embedding, the index is {self.dim}-d"
            )
        with self._lock:
            self._species.setdefault(species, _Species(self.dim)).add(sighting_id, individual_id, embedding)

    def remove(self, sighting_id: int) -> None:
        with self._lock:
            for sp in self._species.values():
                mask = sp.sighting_ids != sighting_id
                if not mask.all():
                    sp.keep(mask)

    def merge(self, source_id: int, target_id: int) -> None:
        with self._lock:
            for sp in self._species.values():
                if (sp.individual_ids == source_id).any():
                    sp.individual_ids = np.where(sp.individual_ids == source_id, target_id, sp.individual_ids)

    def search(self, query: np.ndarray, species: str, top_k: int, per_individual: int = 3) -> list[dict]:
        """Individuals of ``species`` ranked by best sighting score: ``[{individual_id, score, sightings}]``,
        ``sightings`` the individual's best ``per_individual`` (sighting_id, score) pairs."""
        with self._lock:
            sp = self._species.get(species)
            if sp is None or not len(sp.sighting_ids):
                return []
            scores, idx = sp.search(query, k=max(50, top_k * 20), method=self.method)
            sids, iids = sp.sighting_ids[idx], sp.individual_ids[idx]
        ranked: dict[int, dict] = {}
        for score, sid, iid in zip(scores.tolist(), sids.tolist(), iids.tolist(), strict=True):
            entry = ranked.setdefault(iid, {"individual_id": iid, "score": score, "sightings": []})
            if len(entry["sightings"]) < per_individual:
                entry["sightings"].append({"sighting_id": sid, "score": score})
        return list(ranked.values())[:top_k]
