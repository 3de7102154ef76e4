#!/usr/bin/env python
"""Convert a local MiewID checkpoint to an animal-reid Hub folder (same as `python -m animal_reid.convert.miewid`).

Run `python scripts/convert_miewid_to_hf.py --help` for the options.
"""

from animal_reid.convert.miewid import main

if __name__ == "__main__":
    main()
