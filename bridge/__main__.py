"""``python -m bridge``: the same as the ``eventbus-bridge`` command."""

from .cli import main

raise SystemExit(main())
