"""Sources: what emits events besides the bus itself (user calls, samplers, probes)."""
