"""``python -m aggpose_jax.convert`` = ``aggpose-convert``."""

import sys

from aggpose_jax.convert.cli import main

sys.exit(main())
