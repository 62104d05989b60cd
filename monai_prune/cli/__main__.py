"""``python -m monai_prune.cli``: the ``monai-prune`` command."""

import sys

from . import main

sys.exit(main())
