"""``python -m cli``: the ``certroll`` console script."""

from cli.main import main

raise SystemExit(main())
