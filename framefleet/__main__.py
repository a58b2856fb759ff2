import sys

from framefleet.cli import main

sys.exit(main())
