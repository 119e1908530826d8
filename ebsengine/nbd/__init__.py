"""NBD server for ebsengine volumes (read-write) and snapshots (read-only).

Layout: ``protocol`` (wire constants, framing), ``exports`` (names -> devices, the
errno table), ``handshake`` (option haggling), ``transmission`` (requests and replies),
``server`` (listeners, lifecycle, :func:`serve`). This package imports only the engine
facade and ``ebsengine.errors``; nothing in the engine imports it.
"""

from ebsengine.nbd.server import DEFAULT_TCP_PORT, NbdServer, serve

__all__ = ["DEFAULT_TCP_PORT", "NbdServer", "serve"]
