"""``python -m daemon.cli``: the ``ctd`` command."""

import sys

from daemon.cli.main import main

sys.exit(main())
