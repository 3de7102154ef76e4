"""Encounters: time-gap chains per species and camera (or site), named encounters kept, photo encounters without a
date-time or place; the same-photo split into tracks."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from animal_reid.season.annotations import Annotation
from animal_reid.season.encounters import EncounterError, group_encounters, split_same_photo


def _ann(aid, when=None, camera="C1", species="zebra", photo=None, **kw) -> Annotation:
    return Annotation(aid, photo or f"{aid}.jpg", species=species, datetime=when, camera=camera, **kw)


def _by_id(anns) -> dict[str, str]:
    return {a.annotation_id: a.encounter for a in anns}


def test_time_gaps_chain_within_gap_and_split_beyond():
    anns = [
        _ann("a", "2026-05-01T06:00:00"),
        _ann("b", "2026-05-01T06:05:00"),  # 300 s after a
        _ann("c", "2026-05-01T06:15:00"),  # 600 s after b: still chained (gap <= gap_s)
        _ann("d", "2026-05-01T06:25:01"),  # 601 s after c: a new encounter
        _ann("e", "2026-05-01T06:30:00"),
    ]
    got = _by_id(group_encounters(anns, gap_s=600))
    first, second = "enc:zebra:C1:2026-05-01T06:00:00", "enc:zebra:C1:2026-05-01T06:25:01"
    assert got == {"a": first, "b": first, "c": first, "d": second, "e": second}
    # a larger gap joins them all, a smaller one splits each
    assert set(_by_id(group_encounters(anns, gap_s=3600)).values()) == {first}
    assert len(set(_by_id(group_encounters(anns, gap_s=0)).values())) == 5


def test_cameras_species_and_sites_are_kept_apart():
    anns = [
        _ann("a", "2026-05-01T06:00:00", camera="C1"),
        _ann("b", "2026-05-01T06:01:00", camera="C2"),
        _ann("c", "2026-05-01T06:02:00", camera="C1", species="lion"),
        _ann("d", "2026-05-01T06:03:00", camera=None, site="waterhole"),
        _ann("e", "2026-05-01T06:04:00", camera=None, site="waterhole"),
        _ann("f", "2026-05-01T06:05:00", camera="C1"),
        _ann("g", "2026-05-01T06:06:00", camera="C1", species=None),
    ]
    assert _by_id(group_encounters(anns)) == {
        "a": "enc:zebra:C1:2026-05-01T06:00:00",
        "b": "enc:zebra:C2:2026-05-01T06:01:00",
        "c": "enc:lion:C1:2026-05-01T06:02:00",
        "d": "enc:zebra:site=waterhole:2026-05-01T06:03:00",
        "e": "enc:zebra:site=waterhole:2026-05-01T06:03:00",
        "f": "enc:zebra:C1:2026-05-01T06:00:00",
        "g": "enc:-:C1:2026-05-01T06:06:00",
    }


def test_no_datetime_or_no_place_groups_one_photo_only_and_named_encounters_are_kept():
    anns = [
        _ann("a", None, photo="p1.jpg"),
        _ann("b", None, photo="p1.jpg"),  # a second detection in the same photo
        _ann("c", None, photo="p2.jpg"),
        _ann("d", "2026-05-01T06:00:00", camera=None, photo="p3.jpg"),  # a date but no camera or site
        _ann("e", "2026-05-01T06:01:00", camera=None, photo="p4.jpg"),
        _ann("f", "2026-05-01T06:00:30", encounter="event-7"),
        _ann("g", "2026-05-01T06:00:00"),
    ]
    got = _by_id(group_encounters(anns))
    assert got == {
        "a": "enc:zebra:photo=p1.jpg",
        "b": "enc:zebra:photo=p1.jpg",
        "c": "enc:zebra:photo=p2.jpg",
        "d": "enc:zebra:photo=p3.jpg",
        "e": "enc:zebra:photo=p4.jpg",
        "f": "event-7",
        "g": "enc:zebra:C1:2026-05-01T06:00:00",  # f is named: it does not join g's chain
    }
    assert [a.encounter for a in anns] == [None] * 5 + ["event-7", None]  # copies: the input is unchanged


def test_utc_offsets_compare_instants_and_ids_do_not_depend_on_order():
    anns = [
        _ann("a", "2026-05-01T06:00:00+02:00"),
        _ann("b", "2026-05-01T04:05:00Z"),  # 5 minutes after a
        _ann("c", "2026-05-01T04:05:00"),  # no offset: not compared with the others
    ]
    got = _by_id(group_encounters(anns))
    assert got == {
        "a": "enc:zebra:C1:2026-05-01T06:00:00+02:00",
        "b": "enc:zebra:C1:2026-05-01T06:00:00+02:00",
        "c": "enc:zebra:C1:2026-05-01T04:05:00",
    }
    many = [_ann(f"x{i}", f"2026-05-0{1 + i % 3}T06:{i:02d}:00", camera=f"C{i % 2}") for i in range(30)]
    shuffled = many[:]
    random.Random(3).shuffle(shuffled)
    assert _by_id(group_encounters(many)) == _by_id(group_encounters(shuffled))


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01T06:00:00", "01/05/2026 06:00"])
def test_a_bad_datetime_is_one_line_naming_the_annotation(text):
    anns = [_ann("a", "2026-05-01T06:00:00"), _ann("b", text, source="md.json images[4] detections[0]")]
    with pytest.raises(EncounterError) as err:
        group_encounters(anns)
    assert str(err.value) == (
        f"annotation 'b' (md.json images[4] detections[0]): datetime {text!r} is not ISO 8601 "
        "(e.g. 2026-05-01T06:12:30)"
    )


@pytest.mark.parametrize("gap", [-1, math.nan, "600"])
def test_a_bad_gap_is_one_line(gap):
    with pytest.raises(EncounterError) as err:
        group_encounters([_ann("a", "2026-05-01T06:00:00")], gap_s=gap)
    assert str(err.value) == f"gap_s must be a number of seconds >= 0, got {gap!r}"


def _unit(*v) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


def test_same_photo_annotations_split_into_tracks_linked_by_similarity():
    # two animals, A ~ x axis, B ~ y axis, photographed together twice, then B alone
    anns = [
        _ann("p1-b", "2026-05-01T06:00:00", photo="p1.jpg", encounter="E"),
        _ann("p1-a", "2026-05-01T06:00:00", photo="p1.jpg", encounter="E"),
        _ann("p2-a", "2026-05-01T06:00:10", photo="p2.jpg", encounter="E"),
        _ann("p2-b", "2026-05-01T06:00:10", photo="p2.jpg", encounter="E"),
        _ann("p3-b", "2026-05-01T06:00:20", photo="p3.jpg", encounter="E"),
        _ann("solo", "2026-05-01T06:00:00", photo="p9.jpg", encounter="F"),
    ]
    emb = np.stack([_unit(0.1, 1), _unit(1, 0.2), _unit(1, 0.1), _unit(0.2, 1), _unit(0.1, 1), _unit(1, 1)])
    got = _by_id(split_same_photo(anns, emb))
    assert got == {"p1-b": "E/1", "p1-a": "E/2", "p2-a": "E/2", "p2-b": "E/1", "p3-b": "E/1", "solo": "F"}


def test_a_later_photo_with_more_animals_opens_a_track_and_species_split_a_named_encounter():
    anns = [
        _ann("p1-a", "2026-05-01T06:00:00", photo="p1.jpg", encounter="E"),
        _ann("p2-a", "2026-05-01T06:00:10", photo="p2.jpg", encounter="E"),
        _ann("p2-b", "2026-05-01T06:00:10", photo="p2.jpg", encounter="E"),
        _ann("lion", "2026-05-01T06:00:10", photo="p2.jpg", encounter="E", species="lion"),
        _ann("free", None, photo="p5.jpg", encounter=None),
    ]
    emb = np.stack([_unit(1, 0), _unit(1, 0.1), _unit(0, 1), _unit(1, 0), _unit(0, 1)])
    got = _by_id(split_same_photo(anns, emb))
    assert got == {
        "p1-a": "E/zebra/1",
        "p2-a": "E/zebra/1",
        "p2-b": "E/zebra/2",
        "lion": "E/lion",
        "free": "ann:free",
    }
