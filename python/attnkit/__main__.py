"""``python -m attnkit`` = the ``attnkit`` command."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
