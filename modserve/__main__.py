import sys

from modserve.cli import main

sys.exit(main())
