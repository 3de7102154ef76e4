"""Public re-ID sources with a plain download (LILA Wild Me COCO exports), declared as data.

Each is a Wildbook COCO export read by :class:`~data_scripts.sources.importers.CocoSource`; download with
``python -m data_scripts.build --download --sources whaleshark ...`` (resumable, extracted under the data root).
Sizes and checksums are not published by LILA; each archive is checked for completeness (Content-Length)
and a declaration can pin ``size``/``sha256`` once a copy has been verified.
"""

from __future__ import annotations

from ..download import Download
from .base import SourceInfo, register
from .importers import CocoSource

LILA_LICENSE = "CDLA-Permissive-1.0 (Community Data License Agreement, permissive variant)"
_LILA = "https://storage.googleapis.com/public-datasets-lila/wild-me/{name}.coco.tar.gz"
_LILA_MIRRORS = (
    "https://lilawildlife.blob.core.windows.net/lila-wildlife/wild-me/{name}.coco.tar.gz",
    "http://us-west-2.opendata.source.coop.s3.amazonaws.com/agentmorris/lila-wildlife/wild-me/{name}.coco.tar.gz",
)


def _lila(name: str) -> tuple[Download, ...]:
    return (
        Download(
            url=_LILA.format(name=name),
            filename=f"{name}.coco.tar.gz",
            mirrors=tuple(m.format(name=name) for m in _LILA_MIRRORS),
        ),
    )


@register
class WhaleShark(CocoSource):
    info = SourceInfo(
        name="whaleshark",
        species=("whale_shark",),
        license=LILA_LICENSE,
        citation="""@article{holmberg2009estimating,
  title   = {Estimating population size, structure, and residency time for whale sharks Rhincodon typus
             through collaborative photo-identification},
  author  = {Holmberg, Jason and Norman, Bradley and Arzoumanian, Zaven},
  journal = {Endangered Species Research},
  volume  = {7},
  pages   = {39--53},
  year    = {2009}
}""",
        url="https://lila.science/datasets/whale-shark-id",
        version="LILA whaleshark.coco (2020)",
        folder="whaleshark.coco",
        description="Whale shark photos with bounding boxes and viewpoints from Wildbook for Whale Sharks.",
        reported_images=7693,
        reported_identities=543,
        downloads=_lila("whaleshark"),
    )


@register
class GreatZebraGiraffeCount(CocoSource):
    info = SourceInfo(
        name="gzgc",
        species=("plains_zebra", "masai_giraffe"),
        license=LILA_LICENSE,
        citation="""@inproceedings{parham2017animal,
  title     = {Animal population censusing at scale with citizen science and photographic identification},
  author    = {Parham, Jason and Crall, Jonathan and Stewart, Charles and Berger-Wolf, Tanya and Rubenstein, Daniel I.},
  booktitle = {AAAI Spring Symposium: AI for Social Good},
  year      = {2017}
}""",
        url="https://lila.science/datasets/great-zebra-giraffe-id",
        version="LILA gzgc.coco",
        folder="gzgc.coco",
        description="Great Zebra and Giraffe Count: plains zebras and Masai giraffes, Nairobi National Park.",
        reported_images=4948,
        downloads=_lila("gzgc"),
    )


@register
class Leopard(CocoSource):
    info = SourceInfo(
        name="leopard",
        species=("leopard",),
        license=LILA_LICENSE,
        citation="""@misc{bpct2022leopard,
  title        = {Panthera pardus CSV custom export},
  author       = {{Botswana Predator Conservation Trust}},
  year         = {2022},
  howpublished = {Retrieved from African Carnivore Wildbook, \\url{https://lila.science/datasets/leopard-id-2022}}
}""",
        url="https://lila.science/datasets/leopard-id-2022",
        version="LILA leopard.coco (2022)",
        folder="leopard.coco",
        description="African leopards from camera traps and field photos, Botswana.",
        reported_images=6795,
        reported_identities=430,
        downloads=_lila("leopard"),
    )


@register
class Hyena(CocoSource):
    info = SourceInfo(
        name="hyena",
        species=("spotted_hyena",),
        license=LILA_LICENSE,
        citation="""@misc{bpct2022hyena,
  title        = {Crocuta crocuta COCO export},
  author       = {{Botswana Predator Conservation Trust}},
  year         = {2022},
  howpublished = {Retrieved from African Carnivore Wildbook, \\url{https://lila.science/datasets/hyena-id-2022}}
}""",
        url="https://lila.science/datasets/hyena-id-2022",
        version="LILA hyena.coco (2022)",
        folder="hyena.coco",
        description="Spotted hyenas from camera traps and field photos, Botswana.",
        reported_images=3129,
        reported_identities=256,
        downloads=_lila("hyena"),
    )


@register
class Beluga(CocoSource):
    info = SourceInfo(
        name="beluga",
        species=("beluga",),
        license=LILA_LICENSE,
        citation="""@misc{beluga2022,
  title        = {Beluga ID 2022},
  author       = {{Wild Me} and {Cook Inlet Beluga Whale Photo-ID Project}},
  year         = {2022},
  howpublished = {\\url{https://lila.science/datasets/beluga-id-2022}}
}""",
        url="https://lila.science/datasets/beluga-id-2022",
        version="LILA beluga.coco (2022)",
        folder="beluga.coco",
        description="Aerial top-view photos of beluga whales.",
        reported_images=5902,
        reported_identities=788,
        downloads=_lila("beluga"),
    )
