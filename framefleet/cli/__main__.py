"""`python -m framefleet.cli`, as the tests start their coordinators: the `framefleet`
command, with unbuffered output in the processes it starts."""

import os
import sys

from framefleet.cli import main

os.environ.setdefault("PYTHONUNBUFFERED", "1")
sys.exit(main())
