"""``python -m flowrl ...`` (and ``accelerate launch -m flowrl train --config ...``): the ``flowrl`` command."""

import sys

from flowrl.cli import main

sys.exit(main())
