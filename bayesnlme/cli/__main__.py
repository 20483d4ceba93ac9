"""``python -m bayesnlme.cli``: the ``bayesnlme`` command."""

import sys

from bayesnlme.cli import main

sys.exit(main())
