"""tether: production infrastructure for AI agents, on an event-sourced NATS JetStream log."""

from tether.bus import Bus, connect
from tether.schemas import Event

__version__ = "0.1.0"

__all__ = ["Bus", "Event", "__version__", "connect"]
