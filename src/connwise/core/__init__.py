"""The sans-I/O policy engine: pure state machines fed events and `now`, returning decisions.

Nothing here does I/O, reads a clock or imports asyncio; the pool, the gateway and the simulator
drive the very same objects.
"""
