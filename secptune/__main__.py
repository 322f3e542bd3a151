"""``python -m secptune``: the command line without an installed entry point (e.g. a GPU host)."""

from secptune.cli import main

raise SystemExit(main())
