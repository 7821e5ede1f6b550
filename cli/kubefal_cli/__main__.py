"""``python -m kubefal_cli``: the same as the ``kubefal`` console script."""

import kubefal_cli.main

kubefal_cli.main.main()
