"""The OCPP 1.6 local controller: one site connection shared by many charge points (issue 15).

server.py (composition root, forwarding, fallbacks) · upstream.py (one upstream link per identity) ·
site.py (pure balancing policy) · store.py (queue, de-duplication, transaction ids) · config.py
(``[local_controller]``) · cli.py (``chargepoint local-controller``) · status.py (``chargepoint status``).
"""
