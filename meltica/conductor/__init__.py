"""The Conductor: order books, fused outputs, throttling and analytics hooks."""
