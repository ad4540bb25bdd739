import sys

from lowtune.cli import main

sys.exit(main())
