"""Allow ``python -m kubefal_runner``."""

import sys

from kubefal_runner import entrypoint

sys.exit(entrypoint.main())
