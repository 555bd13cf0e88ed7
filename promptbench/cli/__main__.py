"""``python -m promptbench.cli``: the ``promptbench`` command."""

from promptbench.cli import main

raise SystemExit(main())
