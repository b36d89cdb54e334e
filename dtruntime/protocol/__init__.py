"""The pure, sans-IO control-plane protocol.

Nothing in this package performs IO, reads a clock, starts a thread or touches global
randomness: time is passed in as ``now`` (monotonic seconds) and randomness as a seeded
``random.Random``. The ZeroMQ runtime and the deterministic simulator drive the very
same :class:`~dtruntime.protocol.node.Node`. ``tests/test_purity.py`` enforces this.
"""
