import sys

from drope_lens.cli import main

sys.exit(main())
