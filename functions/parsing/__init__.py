"""Each trigger family's payloads parsed, once, into commands (``shared.domain.commands``).

One module per family: ``hub_events`` (Event Hubs), ``lifecycle`` (Event Grid),
``work_queue`` (storage queue), ``api`` and ``principal`` (HTTP); ``common`` holds what
they share. Every function is pure: no I/O, no Azure SDK.
"""
