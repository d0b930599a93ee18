import sys

from kvblend.cli import main

sys.exit(main())
