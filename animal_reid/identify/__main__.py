"""``python -m animal_reid.identify``: the identification command line (:func:`animal_reid.identify.cli.main`)."""

import sys

from .cli import main

sys.exit(main())
