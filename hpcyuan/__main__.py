"""`python -m hpcyuan` is the `hpcyuan` command."""

import sys

from hpcyuan.cli import main

sys.exit(main())
