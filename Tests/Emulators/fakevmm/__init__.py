"""Shared parts of Vouch's VMM emulators (test doubles, never shipped).

http      - HTTP/1.1 server on a unix socket (keep-alive, Content-Length)
jsonpos   - JSON parser that remembers positions (for serde-style errors)
schema    - request body validation with serde_json-like fault text
qemu      - QEMU runner (TCG) and a small QMP client
vsock     - host side of the vsock stand-in (CONNECT/OK over virtserial)
faults    - fault injection parsed from an environment variable
log       - prefixed logging to stderr or a file
"""
