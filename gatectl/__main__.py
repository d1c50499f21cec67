import sys

from gatectl.cli import main

sys.exit(main())
