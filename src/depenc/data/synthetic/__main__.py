"""``python -m depenc.data.synthetic ...``: the corpus's command line (see :mod:`.cli`)."""

import sys

from .cli import main

sys.exit(main())
