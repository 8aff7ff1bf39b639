"""``python -m fuzz``: see fuzz/README.md."""

from fuzz.cli import main

raise SystemExit(main())
