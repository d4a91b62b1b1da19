"""``python -m etalage.cli`` (what torchrun starts: ``torchrun ... -m etalage.cli train ...``)."""

import sys

from etalage.cli import main

sys.exit(main())
