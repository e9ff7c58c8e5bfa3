"""Alias of `python -m partial_ft sweep` (docs/sweep.md)."""
import sys, partial_ft.__main__ as cli  # noqa: E401
sys.exit(cli.main(["sweep", *sys.argv[1:]]))
