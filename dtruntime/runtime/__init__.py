"""The IO side of dtruntime: transport, authentication, rate limiting, bootstrap.

Everything that touches sockets, the environment or the wall clock lives here; the
protocol core (``dtruntime.protocol``) never imports this package.
"""
