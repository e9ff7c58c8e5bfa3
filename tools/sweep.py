"""Alias of `python -m partial_ft sweep` (docs/sweep.md), kept for the commands written before it."""
import sys
from partial_ft.__main__ import main
sys.exit(main(["sweep", *sys.argv[1:]]))
