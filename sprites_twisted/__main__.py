"""
``python -m sprites_twisted``: the ``sprites-proxy`` command
(:mod:`sprites_twisted.cli`).
"""

from sprites_twisted.cli import main

if __name__ == "__main__":
    main()
