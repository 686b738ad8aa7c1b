"""``python -m meltica`` is ``meltica-engine``."""

from meltica.cli import main

raise SystemExit(main())
