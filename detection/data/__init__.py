"""The detection datasets and their transforms."""

import os

# albumentations asks the network for a newer version on import: a delay and a warning on every
# offline cluster node. Set here, before any module of this package imports it; users who want the
# check can set the variable to 0.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
