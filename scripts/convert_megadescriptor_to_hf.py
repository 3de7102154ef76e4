#!/usr/bin/env python
"""Convert a local MegaDescriptor (timm Swin) checkpoint to an animal-reid Hub folder (same as `python -m animal_reid.convert.megadescriptor`).

Run `python scripts/convert_megadescriptor_to_hf.py --help` for the options.
"""

from animal_reid.convert.megadescriptor import main

if __name__ == "__main__":
    main()
