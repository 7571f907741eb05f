import sys

from cloudcompute.cli import main

sys.exit(main())
