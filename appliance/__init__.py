"""Real-time machine learning on one machine.

One process ingests a stream of events, keeps per-entity features in event time, learns online
from delayed labels and serves predictions over a local socket.
"""

from __future__ import annotations

__version__ = "0.1.0"
