"""``python -m strokelab.data.phantom ROOT ...``: see :func:`strokelab.data.phantom.main`."""

from strokelab.data.phantom import main

raise SystemExit(main())
