"""What a photo file says about itself: its displayed size, and the date-time, place and camera in its EXIF.

:func:`read_photo` opens a photo (Pillow), reads its displayed size (EXIF orientation applied, the rule of
:func:`modeling.displayed_size`: the pixels boxes are given in), checks that its pixels decode (a JPEG at 1/8
scale: about 19 ms for a 12-megapixel photo) and parses its EXIF:

* date-time: ``DateTimeOriginal`` (0x9003 in the Exif IFD), else ``DateTimeDigitized`` (0x9004), else the main
  IFD's ``DateTime`` (0x0132), with ``OffsetTimeOriginal`` (0x9011) when present, as ISO 8601
  (``2026-05-01T06:12:30+02:00``);
* place: the GPS IFD (0x8825): ``GPSLatitude``/``GPSLongitude`` (degrees, minutes, seconds as rationals) signed by
  ``GPSLatitudeRef`` (N/S) and ``GPSLongitudeRef`` (E/W), as float degrees; ``0, 0`` (a camera without a fix) is
  no place;
* camera: ``Make`` and ``Model`` (the make once when the model repeats it), and ``BodySerialNumber`` (0xA431)
  when present (``RECONYX HC600 serial H500123``): the key encounters group photos by.

A photo without EXIF gives empty fields and no note. EXIF that cannot be parsed (Pillow warns of corrupt data, a
block that is not TIFF, an exception) gives empty fields and a one-line :attr:`PhotoInfo.note`; a single value that
makes no sense (a date ``0000:00:00 00:00:00``, a latitude of 95 degrees) leaves that field empty, with a note, and
keeps the others. A file that is not a readable image raises :class:`UnreadablePhoto`; nothing here crashes on a
photo's metadata.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "IMAGE_SUFFIXES",
    "PhotoInfo",
    "UnreadablePhoto",
    "camera_name",
    "displayed_size",
    "exif_fields",
    "iso_datetime",
    "read_photo",
]

#: the file name endings read as photos (case-insensitive)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".tif", ".tiff", ".webp", ".bmp")

_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_MAKE, _MODEL, _DATETIME = 0x010F, 0x0110, 0x0132
_ORIGINAL, _DIGITIZED, _OFFSET_ORIGINAL, _SERIAL = 0x9003, 0x9004, 0x9011, 0xA431
_DATE_TAGS = ((_ORIGINAL, "DateTimeOriginal"), (_DIGITIZED, "DateTimeDigitized"), (_DATETIME, "DateTime"))
_EXIF_DATE = re.compile(r"^(\d{4}):(\d{2}):(\d{2})([ T].*)?$")
_OFFSET = re.compile(r"^[+-]\d{2}:\d{2}$")


class UnreadablePhoto(Exception):
    """A file that is not a readable image; the message says why (without the path)."""


@dataclass
class PhotoInfo:
    """A photo's displayed size and what its EXIF says (None where it says nothing usable)."""

    size: tuple[int, int]  # (width, height) as displayed, EXIF orientation applied
    datetime: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    camera: str | None = None
    notes: list[str] = field(default_factory=list)  # EXIF problems, one line each

    @property
    def note(self) -> str | None:
        """The EXIF problems as one line (None when there were none)."""
        return "; ".join(self.notes) or None


def _text(value: Any) -> str | None:
    """An EXIF ASCII value as clean text (NUL padding and blanks removed); None when empty or not text."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = value.replace("\x00", "").strip()
    return value or None


def _shown(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def iso_datetime(text: str) -> str:
    """ISO 8601 from an EXIF (``2026:05:01 06:12:30``) or ISO (``2026-05-01 06:12:30``, ``...T...+02:00``)
    date-time or date; :class:`ValueError` when it is not one (``0000:00:00 00:00:00`` included)."""
    text = text.strip()
    m = _EXIF_DATE.match(text)
    if m:
        text = f"{m.group(1)}-{m.group(2)}-{m.group(3)}{(m.group(4) or '').replace(' ', 'T', 1)}"
    if len(text) == 10:
        return _dt.date.fromisoformat(text).isoformat()
    return _dt.datetime.fromisoformat(text).isoformat()


def _exif_datetime(base: Any, exif_ifd: Any, notes: list[str]) -> str | None:
    for tag, name in _DATE_TAGS:
        raw = (base if tag == _DATETIME else exif_ifd).get(tag)
        text = _text(raw)
        if text is None or not text.strip(" :"):  # absent, or the blank "    :  :     :  :  "
            continue
        try:
            value = iso_datetime(text)
        except ValueError:
            notes.append(f"EXIF {name} {_shown(raw)} is not a date-time: date left empty")
            return None
        if tag == _ORIGINAL and "T" in value and _dt.datetime.fromisoformat(value).tzinfo is None:
            offset = _text(exif_ifd.get(_OFFSET_ORIGINAL))
            if offset is not None and _OFFSET.match(offset):
                value += offset
            elif offset is not None:
                notes.append(f"EXIF OffsetTimeOriginal {_shown(offset)} is not +HH:MM: time zone left out")
        return value
    return None


def _degrees(value: Any) -> float:
    """Degrees from 1 to 3 rationals (degrees, minutes, seconds); :class:`ValueError` when not finite numbers."""
    parts = list(value) if isinstance(value, tuple | list) else [value]
    if not 1 <= len(parts) <= 3:
        raise ValueError("expected degrees, minutes, seconds")
    nums = [float(p) for p in parts]
    if not all(math.isfinite(n) and n >= 0 for n in nums) or any(n >= 60 for n in nums[1:]):
        raise ValueError("not degrees, minutes, seconds")
    return sum(n / 60**i for i, n in enumerate(nums))


def _coordinate(gps: Any, value_tag: int, ref_tag: int, refs: str, limit: float) -> float | None:
    """One signed coordinate; None when absent; :class:`ValueError` naming the problem."""
    value, ref = gps.get(value_tag), _text(gps.get(ref_tag))
    if value is None:
        return None
    try:
        degrees = _degrees(value)
    except (TypeError, ValueError, ZeroDivisionError):
        raise ValueError(f"{_shown(value)} is not degrees, minutes, seconds") from None
    if degrees > limit:
        raise ValueError(f"{degrees:g} degrees is beyond {limit:g}")
    if ref is None or ref.upper() not in refs:
        raise ValueError(f"reference {_shown(gps.get(ref_tag))} is not {' or '.join(refs)}")
    return -degrees if ref.upper() == refs[1] else degrees


def _exif_place(gps: Any, notes: list[str]) -> tuple[float | None, float | None]:
    if not gps:
        return None, None
    try:
        lat = _coordinate(gps, 2, 1, "NS", 90.0)
    except ValueError as err:
        notes.append(f"EXIF GPS latitude {err}: place left empty")
        return None, None
    try:
        lon = _coordinate(gps, 4, 3, "EW", 180.0)
    except ValueError as err:
        notes.append(f"EXIF GPS longitude {err}: place left empty")
        return None, None
    if (lat is None) != (lon is None):
        notes.append("EXIF GPS has a latitude or a longitude, not both: place left empty")
        return None, None
    if lat == 0.0 and lon == 0.0:  # how a camera without a fix writes it
        return None, None
    return lat, lon


def camera_name(make: Any, model: Any, serial: Any = None) -> str | None:
    """``Make Model`` (the make once when the model starts with it) and ``serial <n>`` when known; None if empty."""
    make, model, serial = _text(make), _text(model), _text(serial)
    if make and model and model.lower().startswith(make.lower()):
        make = None
    name = " ".join(p for p in (make, model) if p)
    if serial:
        name = f"{name} serial {serial}".strip()
    return name or None


def exif_fields(exif: Any) -> tuple[dict[str, Any], list[str]]:
    """``{datetime, latitude, longitude, camera}`` from a Pillow :class:`~PIL.Image.Exif`, and the notes on
    values that make no sense (a structurally corrupt block is :func:`read_photo`'s business)."""
    notes: list[str] = []
    exif_ifd, gps = exif.get_ifd(_EXIF_IFD), exif.get_ifd(_GPS_IFD)
    lat, lon = _exif_place(gps, notes)
    values = {
        "datetime": _exif_datetime(exif, exif_ifd, notes),
        "latitude": lat,
        "longitude": lon,
        "camera": camera_name(exif.get(_MAKE), exif.get(_MODEL), exif_ifd.get(_SERIAL)),
    }
    return values, notes


def _tiff_block(raw: Any) -> bool:
    """Whether an EXIF block (with or without the ``Exif\\0\\0`` prefix) starts as TIFF data does."""
    if not isinstance(raw, bytes | bytearray) or not raw:
        return True  # none, or not ours to judge
    data = bytes(raw[6:]) if raw.startswith(b"Exif\x00\x00") else bytes(raw)
    return data[:4] in (b"II*\x00", b"MM\x00*")


def _exif_problem(caught: list) -> str | None:
    """The first warning Pillow gave while parsing EXIF (TIFF tag) data, as one line; None when it gave none."""
    for w in caught:
        text = " ".join(str(w.message).split())
        if "TiffImagePlugin" in str(w.filename) or "EXIF" in text.upper():
            return text
    return None


def _parse_exif(image: Any) -> tuple[dict[str, Any], list[str]]:
    """The EXIF fields and notes (a block that is not TIFF data: empty fields and a note)."""
    empty = {"datetime": None, "latitude": None, "longitude": None, "camera": None}
    if not _tiff_block(image.info.get("exif")):
        return empty, ["EXIF unreadable (the EXIF block is not TIFF data): date, place and camera left empty"]
    try:
        return exif_fields(image.getexif())
    except Exception as err:  # noqa: BLE001 - any parsing failure is a note, never a crash
        text = " ".join(f"{type(err).__name__}: {err}".split())
        return empty, [f"EXIF unreadable ({text}): date, place and camera left empty"]


def _check_pixels(image: Any) -> None:
    """Decode the pixels (a JPEG at 1/8 scale): a truncated or corrupt file fails here, not at embedding time."""
    from PIL import ImageFile

    lenient = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        if image.format == "JPEG":
            image.draft("RGB", (max(1, image.size[0] // 8), max(1, image.size[1] // 8)))
        image.load()
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = lenient


def displayed_size(image: Any) -> tuple[int, int]:
    """``(width, height)`` as displayed: :func:`modeling.displayed_size`'s rule (EXIF orientation 5-8 turns the
    photo), kept here so ingest need not import torch and transformers (12 s and 0.9 GB on 2 cores); a test
    holds the two equal."""
    w, h = image.size
    try:
        turned = image.getexif().get(0x0112) in (5, 6, 7, 8)
    except Exception:  # noqa: BLE001 - malformed EXIF: the photo is shown as stored
        turned = False
    return (h, w) if turned else (w, h)


def _open(path: str | Path, check_pixels: bool) -> PhotoInfo:
    from PIL import Image

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # Pillow warns of corrupt EXIF when it first parses it (at open, too)
        with Image.open(path) as image:
            values, notes = _parse_exif(image)
            size = displayed_size(image)
            if check_pixels:
                _check_pixels(image)
    problem = _exif_problem(caught)
    if problem is not None:
        values = dict.fromkeys(values)
        notes = [f"EXIF unreadable ({problem}): date, place and camera left empty"]
    return PhotoInfo(size=size, notes=notes, **values)


def read_photo(path: str | Path, *, check_pixels: bool = True) -> PhotoInfo:
    """The photo's displayed size and EXIF fields; :class:`UnreadablePhoto` when it is not a readable image."""
    from PIL import Image

    try:
        return _open(path, check_pixels)
    except Image.DecompressionBombError as err:
        raise UnreadablePhoto(f"too many pixels ({err})") from err
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - Pillow raises many kinds on corrupt files: each one a skip
        reason = " ".join(str(err).split()) or type(err).__name__
        if isinstance(err, OSError) and err.strerror:  # permission denied, ... (without the path)
            reason = err.strerror.lower()
        if "cannot identify image file" in reason:
            reason = "not an image Pillow can read"
        raise UnreadablePhoto(reason) from err
