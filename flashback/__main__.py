from __future__ import annotations

import sys

from flashback.cli import main

sys.exit(main())
