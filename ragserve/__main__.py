import sys

from ragserve.cli import main

sys.exit(main())
