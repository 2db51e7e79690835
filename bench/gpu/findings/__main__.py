"""`python -m bench.gpu.findings gpu [--check]`."""
import sys

from . import main

sys.exit(main())
