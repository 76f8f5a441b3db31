"""`python -m harness` is the `clipsteer` command."""
import sys

from harness.cli import main

sys.exit(main())
