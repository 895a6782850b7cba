"""orderbook."""
