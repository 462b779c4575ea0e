"""``python -m toptune.config --reference``: print ``docs/reference/parameters.md`` (see
:mod:`toptune.config.reference`)."""

from __future__ import annotations

import argparse

from toptune.config.reference import reference

parser = argparse.ArgumentParser(prog="python -m toptune.config", description=__doc__)
parser.add_argument("--reference", action="store_true", help="print the parameter reference (Markdown)")
if parser.parse_args().reference:
    print(reference(), end="")
else:
    parser.print_help()
