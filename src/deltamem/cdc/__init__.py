"""Change data capture: a PostgreSQL table followed into a deltamem table (``deltamem cdc``).

    with Follower(db, "postgresql://app@db/app", table="public.docs", into="docs") as follower:
        follower.run(interval=1.0)

See ``deltamem.cdc.follower`` for the guarantees, ``deltamem.cdc.source`` for what the source must allow.
"""

from __future__ import annotations

from deltamem.cdc.follower import Follower, PollResult, default_slot, drop_slot, follow

__all__ = ["Follower", "PollResult", "default_slot", "drop_slot", "follow"]
