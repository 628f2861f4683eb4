"""Services: one object per concern, each owning its state (see docs/architecture.md).

A service is built by the composition root (chargepoint/controller.py) with exactly what it needs — the
store, the configuration keys, a clock, the connectors' read-only view, a way to post connector events,
other services' small interfaces — and exposes typed methods. No service reads another one's fields.
"""
