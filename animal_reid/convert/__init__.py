"""Bring existing re-ID checkpoints into this package's Hub format.

* :func:`convert_miewid`: MiewID (``conservationxlabs/miewid-msv2``/``-msv3``...) safetensors or ``.bin``.
* :func:`convert_megadescriptor`: MegaDescriptor (``BVRA/MegaDescriptor-*``, timm Swin) ``pytorch_model.bin``
  with its timm ``config.json``.

Command lines: ``python -m animal_reid.convert.miewid SRC OUT`` and
``python -m animal_reid.convert.megadescriptor SRC OUT`` (also ``scripts/convert_*_to_hf.py``).
"""

from .common import CheckpointError, ConversionResult, load_state_dict
from .megadescriptor import convert_megadescriptor
from .miewid import convert_miewid

__all__ = [
    "CheckpointError",
    "ConversionResult",
    "convert_megadescriptor",
    "convert_miewid",
    "load_state_dict",
]
