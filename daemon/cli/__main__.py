"""``python -m daemon.cli``: the ``akisnap`` command without its installed script."""

import sys

from daemon.cli import main

sys.exit(main())
