"""``python -m courier``: the Rust ``courier`` command's ``protocols``,
``call``, ``ping`` and ``shutdown`` for Python users (see ``courier._cli``)."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
