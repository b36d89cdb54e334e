"""The user-facing classes: asyncio methods with synchronous twins (``*_sync``)."""
