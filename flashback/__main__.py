from __future__ import annotations

import sys

try:
    from flashback.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python still imports: no traceback
    print("flashback: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
