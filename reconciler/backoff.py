"""How long to wait before retrying a transient failure: exponential, capped, with jitter (so that many
clients failing together do not retry together)."""

from __future__ import annotations

import random


def delay(attempt: int, *, base: float = 0.5, cap: float = 30.0) -> float:
    """Seconds to wait before retry number `attempt` (1, 2, ...): base * 2**attempt, at most cap, times 0.5-1."""
    return min(cap, base * 2 ** attempt) * random.uniform(0.5, 1.0)
