"""Training, evaluation, calibration and export of modserve moderation models.

Importing this package sets ``OMP_WAIT_POLICY=PASSIVE`` (unless already set) before torch
is loaded: on a small shared CPU, OpenMP threads that busy-wait slow a training step
down ~4x whenever another process competes for the cores.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
