"""The unified row schema of the corpus, the species vocabulary and the Hugging Face features.

Every source maps its files to :class:`Record`; everything downstream (validation, splits, writing) only
sees records. The column list is the "Corpus" contract in ``docs/CONTRACTS.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Species:
    """One entry of the controlled species vocabulary."""

    key: str
    common: str
    scientific: str


# The controlled vocabulary: config names of the corpus are these keys. Sources must use one of them;
# rows with any other species are reported and skipped by validation.
SPECIES: dict[str, Species] = {
    s.key: s
    for s in [
        Species("lion", "African lion", "Panthera leo"),
        Species("nyala", "nyala", "Tragelaphus angasii"),
        Species("cattle", "Holstein dairy cow", "Bos taurus"),
        Species("dog", "dog", "Canis familiaris"),
        Species("macaque", "rhesus macaque", "Macaca mulatta"),
        Species("pig", "domestic pig", "Sus scrofa domesticus"),
        Species("whale_shark", "whale shark", "Rhincodon typus"),
        Species("plains_zebra", "plains zebra", "Equus quagga"),
        Species("grevys_zebra", "Grevy's zebra", "Equus grevyi"),
        Species("giraffe", "reticulated giraffe", "Giraffa reticulata"),
        Species("masai_giraffe", "Masai giraffe", "Giraffa tippelskirchi"),
        Species("leopard", "African leopard", "Panthera pardus pardus"),
        Species("spotted_hyena", "spotted hyena", "Crocuta crocuta"),
        Species("beluga", "beluga whale", "Delphinapterus leucas"),
        Species("chimpanzee", "chimpanzee", "Pan troglodytes"),
        Species("sea_turtle", "loggerhead sea turtle", "Caretta caretta"),
        Species("humpback", "humpback whale", "Megaptera novaeangliae"),
        Species("cat", "domestic cat", "Felis catus"),
        # Procedural species of the synthetic source (data_scripts/sources/synthetic.py).
        Species("synth_stripes", "synthetic striped animal", "Synthetica striata"),
        Species("synth_spots", "synthetic spotted animal", "Synthetica maculata"),
        Species("synth_rosettes", "synthetic rosetted animal", "Synthetica rosacea"),
        Species("synth_patches", "synthetic patched animal", "Synthetica reticulata"),
    ]
}

# Aliases as sources spell species (Wildbook / LILA names), mapped to vocabulary keys.
SPECIES_ALIASES: dict[str, str] = {
    "whaleshark": "whale_shark",
    "rhincodon_typus": "whale_shark",
    "zebra_plains": "plains_zebra",
    "equus_quagga": "plains_zebra",
    "zebra_grevys": "grevys_zebra",
    "equus_grevyi": "grevys_zebra",
    "giraffe_reticulated": "giraffe",
    "giraffa_reticulata": "giraffe",
    "giraffe_masai": "masai_giraffe",
    "giraffa_tippelskirchi": "masai_giraffe",
    "leopard": "leopard",
    "panthera_pardus": "leopard",
    "hyena": "spotted_hyena",
    "crocuta_crocuta": "spotted_hyena",
    "beluga_whale": "beluga",
    "whale_beluga": "beluga",
    "delphinapterus_leucas": "beluga",
    "humpback_whale": "humpback",
    "whale_humpback": "humpback",
    "megaptera_novaeangliae": "humpback",
    "domestic_cat": "cat",
    "felis_catus": "cat",
}

SPLITS: tuple[str, ...] = ("train", "validation", "test")
COLUMNS: tuple[str, ...] = (
    "image",
    "image_id",
    "identity",
    "species",
    "species_common",
    "species_scientific",
    "viewpoint",
    "encounter",
    "bbox",
    "theta",
    "source",
    "license",
    "split",
)


def normalize_species(name: str) -> str:
    """Map a source's species spelling to a vocabulary key; unknown names come back normalised but unmapped."""
    key = str(name).strip().lower().replace(" ", "_").replace("-", "_").replace("'", "")
    return SPECIES_ALIASES.get(key, key)


def namespaced(source: str, species: str, original: object) -> str:
    """``"<source>:<species>:<original id>"``: two sources' (or species') "1030" never merge."""
    return f"{source}:{species}:{original}"


@dataclass
class Record:
    """One image as a source describes it, before validation.

    Exactly one of ``path`` (a file read in place) or ``data`` (bytes made by code) is set.
    ``identity`` and ``encounter`` are the source's original ids; :meth:`namespace` prefixes them.
    ``encounter=None`` means the source records no sighting: the image is its own encounter.
    """

    source: str
    species: str
    identity: str | None
    image_id: str
    path: Path | None = None
    data: bytes | None = None
    viewpoint: str | None = None
    encounter: str | None = None
    bbox: tuple[float, float, float, float] | None = None
    theta: float = 0.0
    license: str = ""
    file_name: str | None = (
        None  # name stored with the embedded bytes (extension fixed where the source lies)
    )
    extra: dict = field(default_factory=dict)

    def namespace(self) -> Record:
        """Return a copy whose identity, encounter and image id carry the ``source:species:`` prefix."""
        enc = self.encounter if self.encounter is not None else f"img:{self.image_id}"
        return Record(
            source=self.source,
            species=self.species,
            identity=namespaced(self.source, self.species, self.identity) if self.identity else None,
            image_id=namespaced(self.source, self.species, self.image_id),
            path=self.path,
            data=self.data,
            viewpoint=self.viewpoint,
            encounter=namespaced(self.source, self.species, enc),
            bbox=self.bbox,
            theta=float(self.theta or 0.0),
            license=self.license,
            file_name=self.file_name,
            extra=self.extra,
        )


def hf_features():
    """The ``datasets.Features`` of a corpus split (image decoded by ``datasets``, bbox a float32 list).

    ``bbox`` is a variable-length list (always 4 values or null, enforced by validation), not a fixed-size one:
    pyarrow < 26 cannot read back a Parquet fixed-size list that holds nulls ("Expected all lists to be of size=4"),
    and most sources have no boxes. Seen on the GPU machine's pyarrow 25.
    """
    import datasets

    return datasets.Features(
        {
            "image": datasets.Image(),
            "image_id": datasets.Value("string"),
            "identity": datasets.Value("string"),
            "species": datasets.Value("string"),
            "species_common": datasets.Value("string"),
            "species_scientific": datasets.Value("string"),
            "viewpoint": datasets.Value("string"),
            "encounter": datasets.Value("string"),
            "bbox": datasets.Sequence(datasets.Value("float32")),
            "theta": datasets.Value("float32"),
            "source": datasets.Value("string"),
            "license": datasets.Value("string"),
            "split": datasets.Value("string"),
        }
    )
