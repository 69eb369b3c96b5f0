"""Setup hooks for the worker processes of the local Ray the tool starts (`runtime_env`
`worker_process_setup_hook`, orchestrator/launcher.py).

That Ray runs without a dashboard, so its State API is absent; Ray Train's detached
PlacementGroupCleaner asks that API about its controller every few seconds and logs a warning
each time it cannot (about 300 lines in one demo sweep). On a cluster (RAY_ADDRESS) the hook is
not set and Ray's logging is left alone.
"""

from __future__ import annotations

import logging

PG_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


def quiet_local_ray() -> None:
    logging.getLogger(PG_CLEANER_LOGGER).setLevel(logging.ERROR)
