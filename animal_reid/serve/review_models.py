"""The review queue's request and response bodies (typed, so ``/docs`` shows them)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Status = Literal["waiting", "unsure", "decided", "rejected"]
Band = Literal["known", "unsure", "new"]


class SkippedFile(BaseModel):
    file: str = Field(description="the file (or input row) left out")
    reason: str = Field(description="why, one line")


class BatchOut(BaseModel):
    id: int
    species: str
    source: Literal["photos", "megadetector", "camtrapdp"] = Field(description="where the metadata came from")
    upload: str
    n_photos: int = Field(description="photo files in the upload")
    n_encounters: int
    n_items: int = Field(description="queue items made (one per encounter)")
    skipped: list[SkippedFile]
    observer: str | None
    site: str | None
    encounter_gap_min: float
    created_by: str
    created_at: str


class BatchesOut(BaseModel):
    batches: list[BatchOut]


class ItemPhoto(BaseModel):
    id: int
    url: str
    file: str
    box: list[float] | None = Field(
        description="[x, y, w, h] in the displayed photo's pixels; null: all of it"
    )
    theta: float
    width: int
    height: int
    taken_at: str | None
    site: str | None
    camera: str | None
    viewpoint: str | None
    sighting_id: int | None = Field(description="the sighting this photo was filed as, once decided")


class CandidatePhoto(BaseModel):
    sighting_id: int
    url: str
    score: float
    query_photo_id: int | None = Field(description="the item photo that matched this catalogue photo best")


class Candidate(BaseModel):
    individual_id: int
    name: str | None
    score: float = Field(description="the best photo pair's cosine similarity")
    photos: list[CandidatePhoto] = Field(description="the individual's best matching photos, best first")


class Decision(BaseModel):
    kind: Literal["same", "new", "not_animal"]
    individual_id: int | None
    individual_name: str | None
    sighting_ids: list[int]
    created_individual: bool
    encounter_id: int | None
    skipped: list[str] = Field(description="photos not filed, and why (e.g. already a sighting of it)")
    by: str
    at: str


class Item(BaseModel):
    id: int
    batch_id: int
    species: str
    status: Status
    band: Band | None = Field(description="likely known / unsure / likely new; null without a calibration")
    band_reason: str
    best_score: float | None
    photos: list[ItemPhoto]
    candidates: list[Candidate] = Field(description="from the live catalogue while the item is open")
    group_id: int | None
    decision: Decision | None
    version: int = Field(description="send it back with a decision: a changed item is refused (409)")
    started_at: str | None
    ended_at: str | None
    site: str | None
    lat: float | None
    lon: float | None
    observer: str | None
    notes: str
    updated_by: str | None
    updated_at: str | None
    created_at: str


class QueueOut(BaseModel):
    items: list[Item]
    counts: dict[str, int] = Field(description="items per status (same species and batch filter)")


class DecideIn(BaseModel):
    kind: Literal["same", "new", "unsure", "not_animal"]
    individual_id: int | None = Field(default=None, description="for 'same': the individual it is")
    name: str | None = Field(default=None, max_length=200, description="for 'new': the new individual's name")
    version: int = Field(description="the item's version the page showed")


class GroupOut(BaseModel):
    id: int
    batch_id: int
    species: str
    status: Literal["proposed", "accepted", "merged"]
    proposed_name: str
    individual_id: int | None
    version: int
    items: list[int]
    open_items: list[int] = Field(description="items still waiting or unsure")
    updated_by: str | None


class GroupsOut(BaseModel):
    groups: list[GroupOut]


class AcceptIn(BaseModel):
    name: str = Field(min_length=1, max_length=200, description="the new individual's name")
    version: int | None = None


class SplitIn(BaseModel):
    items: list[int] = Field(min_length=1, description="the items moved into a new group")
    version: int | None = None


class MergeIn(BaseModel):
    groups: list[int] = Field(min_length=2, max_length=2, description="[a, b]: b's items join a")
