"""The service's request bodies and typed answers (pydantic): what ``/docs`` shows and every route returns.

Dates the user or camera gave (``taken_at``, ``first_seen``, ``started_at``) are ISO 8601 text as given
(``2026-05-01T06:12:30``, an offset when known); server times (``created_at``, ``at``) are UTC ISO 8601.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field
from pydantic_core import PydanticCustomError

from animal_reid.serve.settings import species_key


def _species(value: str) -> str:
    try:
        return species_key(value)
    except ValueError as err:
        raise PydanticCustomError("species", str(err)) from None


#: a species name as clients may send it: any case, stored and answered lower-case
Species = Annotated[str, AfterValidator(_species)]
SPECIES_HELP = "species, any case (stored lower-case): letters, digits, _"
Lat = Annotated[float, Field(ge=-90, le=90, description="degrees north")]
Lon = Annotated[float, Field(ge=-180, le=180, description="degrees east")]
Name = Annotated[str, Field(min_length=1, max_length=200)]
Notes = Annotated[str, Field(max_length=10_000)]
Text = Annotated[str, Field(max_length=200)]


# --- requests -----------------------------------------------------------------------------------------------
class NewIndividual(BaseModel):
    name: Name
    species: Species = Field(description=SPECIES_HELP)
    notes: Notes = ""
    aliases: list[Name] = Field(default_factory=list, description="other names it is known by")


class IndividualPatch(BaseModel):
    """Only the fields sent are changed; ``aliases`` replaces the list."""

    name: Name | None = None
    notes: Notes | None = None
    aliases: list[Name] | None = None


class MergeRequest(BaseModel):
    source: int = Field(description="the individual merged into this one (deleted afterwards)")


class SightingPatch(BaseModel):
    """Only the fields sent are changed; null clears a date, place or encounter."""

    taken_at: str | None = Field(default=None, description="ISO 8601, e.g. 2026-05-01T06:12:30")
    lat: Lat | None = None
    lon: Lon | None = None
    site: Text | None = None
    viewpoint: Annotated[str, Field(max_length=64)] | None = None
    observer: Text | None = None
    notes: Notes | None = None
    encounter_id: int | None = None


class NewEncounter(BaseModel):
    species: Species = Field(description=SPECIES_HELP)
    started_at: str | None = Field(default=None, description="ISO 8601")
    ended_at: str | None = Field(default=None, description="ISO 8601")
    site: Text = ""
    lat: Lat | None = None
    lon: Lon | None = None
    observer: Text = ""
    notes: Notes = ""


class EncounterPatch(BaseModel):
    """Only the fields sent are changed; null clears a date or place (or empties a text)."""

    started_at: str | None = Field(default=None, description="ISO 8601")
    ended_at: str | None = Field(default=None, description="ISO 8601")
    site: Text | None = None
    lat: Lat | None = None
    lon: Lon | None = None
    observer: Text | None = None
    notes: Notes | None = None


# --- answers ------------------------------------------------------------------------------------------------
class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    ready: bool
    model: bool
    catalogue: bool
    index: bool


class EmbedAnswer(BaseModel):
    model_id: str
    preprocessing_key: str
    dim: int
    embeddings: list[list[float]] = Field(description="one L2-normalised row per file, in order")


class CandidatePhoto(BaseModel):
    sighting_id: int
    score: float
    url: str


class Candidate(BaseModel):
    rank: int
    individual_id: int
    name: str | None
    score: float = Field(description="cosine similarity of the best-matching sighting")
    photos: list[CandidatePhoto] = Field(description="its best-matching sightings, best first")


class IdentifyAnswer(BaseModel):
    species: str
    model_id: str
    candidates: list[Candidate]
    best_score: float | None
    threshold: float | None
    new_individual: bool | None
    band: Literal["known", "unsure", "new"] | None = Field(
        description="calibrated on this catalogue; null: none"
    )
    band_reason: str


class SpeciesInfo(BaseModel):
    name: str
    individuals: int
    sightings: int
    threshold: float | None


class SpeciesList(BaseModel):
    species: list[SpeciesInfo]


class Cover(BaseModel):
    sighting_id: int
    url: str


class Individual(BaseModel):
    id: int
    name: str
    species: str
    notes: str
    aliases: list[str]
    n_sightings: int
    n_encounters: int = Field(
        description="distinct encounters; sightings with none count once per day taken (else filed)"
    )
    first_seen: str | None = Field(description="oldest taken_at of its sightings")
    last_seen: str | None
    created_at: str
    cover: Cover | None


class Sighting(BaseModel):
    id: int
    individual_id: int
    encounter_id: int | None
    photo: str = Field(description="the photo's sha256")
    url: str
    box: list[float] | None
    theta: float
    taken_at: str | None
    lat: float | None
    lon: float | None
    site: str
    viewpoint: str
    observer: str
    notes: str
    flag: str | None = Field(description="why a reviewer should look at it (null: nothing)")
    model_id: str
    created_at: str
    created_by: str


class NewSighting(Sighting):
    species: str
    individual_name: str


class IndividualDetail(Individual):
    sightings: list[Sighting] = Field(description="oldest taken_at first, undated ones last")


class IndividualList(BaseModel):
    total: int = Field(description="how many match, over all pages")
    individuals: list[Individual]


class DeletedIndividual(BaseModel):
    deleted: Individual
    sightings: int = Field(description="its sightings deleted with it (their photo files are kept)")


class Change(BaseModel):
    seq: int
    at: str
    actor: str
    kind: str
    individual_id: int | None
    sighting_id: int | None
    other_id: int | None
    before: Any
    after: Any


class ChangeList(BaseModel):
    changes: list[Change]
    last_seq: int = Field(description="the newest change in the catalogue (ask again with after=this)")


class Flag(BaseModel):
    id: int
    kind: str
    individual_id: int | None
    sighting_id: int | None
    other_id: int | None
    detail: str
    created_at: str
    resolved_at: str | None
    resolved_by: str | None


class FlagList(BaseModel):
    flags: list[Flag]


class Encounter(BaseModel):
    id: int
    species: str
    started_at: str | None
    ended_at: str | None
    site: str
    lat: float | None
    lon: float | None
    observer: str
    notes: str
    created_at: str
    created_by: str
    sighting_ids: list[int]


class Whoami(BaseModel):
    reviewer: str


class LastSync(BaseModel):
    mode: Literal["incremental", "full"] = Field(
        description="incremental: the change log's rows since the last look; full: every sighting"
    )
    changes: int | None = Field(description="change-log rows followed (null for a full look)")
    sightings_read: int = Field(description="sightings whose individual and species were read")


class Stats(BaseModel):
    individuals: int
    sightings_in_store: int
    sightings_in_index: int
    index_agrees_with_store: bool
    model_id: str
    preprocessing_key: str
    schema_revision: str | None
    encode_batches: int
    follow_poll_s: float | None
    syncs: int
    last_seq: int = Field(description="the change log's newest seq")
    follow_seq: int | None = Field(description="the newest seq this replica has followed")
    last_sync: LastSync | None = Field(default=None, description="what the last look at other writes read")


class SightingForm(BaseModel):
    """The form fields of ``POST /v1/sightings`` (with the photo as ``file``)."""

    individual_id: int | None = Field(default=None, description="a known individual (confirming a match)")
    name: Name | None = Field(default=None, description="a new individual's name (instead of individual_id)")
    species: Species | None = Field(default=None, description=f"the new individual's {SPECIES_HELP}")
    individual_notes: Notes = Field(default="", description="the new individual's notes")
    box: str | None = Field(default=None, description="[x, y, w, h] in the photo's pixels as displayed")
    theta: float = 0.0
    taken_at: str | None = Field(default=None, description="ISO 8601 (default: the photo's EXIF date-time)")
    lat: Lat | None = None
    lon: Lon | None = None
    site: Text = ""
    viewpoint: Annotated[str, Field(max_length=64)] = ""
    observer: Text = ""
    notes: Notes = Field(default="", description="about this sighting")
    encounter_id: int | None = None


# --- explanations (POST /v1/explain) ------------------------------------------------------------------------
class ExplainMatch(BaseModel):
    a: list[float] = Field(description="(x, y) in photo A's pixels as displayed (EXIF orientation applied)")
    b: list[float] = Field(description="(x, y) in photo B's pixels as displayed")
    similarity: float = Field(description="cosine of the two feature-map cells")
    relevance: float = Field(description="product of the two cells' relevance to the pair's cosine")


class ExplainScores(BaseModel):
    residual: float = Field(
        description="inverted residual mean of a homography fitted to the matches, 0 .. 1"
    )
    coverage: float = Field(
        description="share of each image's relevance on matched cells, mean of the two, 0 .. 1"
    )
    similarity: float = Field(
        description="mean cosine of the matched cells' features, weighted by their relevance"
    )
    n_matches: int = Field(description="mutual nearest neighbours between the two feature maps")


class ExplainCrop(BaseModel):
    input_size: list[int] = Field(description="(width, height) of the model input")
    affine: list[float] = Field(
        description="(a, b, c, d, e, f): crop pixel (u, v) -> photo (au+bv+c, du+ev+f)"
    )


class ExplainInput(BaseModel):
    name: str = Field(description="the uploaded file's name, or 'sighting N'")
    sighting_id: int | None = Field(description="the catalogue sighting, when one was named")
    box: list[float] | None = Field(description="the box used: the one sent, else the sighting's")
    theta: float


class ExplainAnswer(BaseModel):
    """Where the two photos agree in the model's own features (PAIR-X), most relevant match first."""

    cosine: float = Field(description="cosine similarity of the two embeddings")
    scores: ExplainScores
    stage: str = Field(description="the backbone stage whose feature maps were matched")
    relevance_method: Literal["lrp", "gradxact"]
    matches: list[ExplainMatch] = Field(description="the top matches, most relevant first")
    heat_a: list[list[float]] = Field(description="relevance grid over the crop the model saw of photo A")
    heat_b: list[list[float]] = Field(description="relevance grid over the crop the model saw of photo B")
    crop_a: ExplainCrop
    crop_b: ExplainCrop
    inputs: list[ExplainInput] = Field(description="photo A and photo B as compared")
    image: str = Field(
        description="the picture (side by side, lines and heat map): a data:image/png;base64 URL"
    )
