"""Alias of `python -m partial_ft sweep` (docs/sweep.md), kept for the commands written before it."""
import runpy
import sys
sys.argv[1:1] = ["sweep"]
runpy.run_module("partial_ft", run_name="__main__", alter_sys=True)
