"""egru-accel: generator of event-driven accelerators for event-based GRU networks."""

__version__ = "0.1.0"
