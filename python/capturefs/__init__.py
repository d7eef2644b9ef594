"""capturefs client-side Python support.

capturefs.protocol implements the socket delivery protocol (docs/protocol.md
in the capturefs source tree): frames, an encoder and an incremental decoder,
standard library only.
"""

__version__ = "0.1.0"
