"""capturefs client-side Python support.

capturefs.protocol implements the socket delivery protocol (docs/protocol.md
in the capturefs source tree): frames, an encoder and an incremental decoder,
standard library only.

capturefs.client talks to a capturefs daemon (found from its mountpoint, or
``capturefs mount M --socket PATH``): ``capture()`` gives a tool a path in the mount and returns what it
wrote, ``Client.subscribe()`` takes streams as they are written.
"""

from .client import (Capture, CaptureError, Client, Event, NeverWritten, Observation, ServerError, Stream,
                     StreamAborted, Subscription, capture, socket_of)

__all__ = [
    "Capture", "CaptureError", "Client", "Event", "NeverWritten", "Observation", "ServerError", "Stream",
    "StreamAborted", "Subscription", "capture", "socket_of",
]

__version__ = "0.1.0"
