"""`python -m zaya_rt ...`: the `zaya-rt` command."""

from zaya_rt.cli import main

raise SystemExit(main())
