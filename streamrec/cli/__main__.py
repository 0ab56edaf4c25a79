"""`python -m streamrec.cli`."""

import sys

from streamrec.cli import main

sys.exit(main())
