"""HTTP/1.1 on a unix socket, the way the VMM API servers speak it.

One thread per connection, keep-alive by default (several requests per
connection or one, both work), bodies framed by Content-Length only.
Handlers run one at a time under a lock: Firecracker's API thread handles
requests serially, and the emulator's state code relies on that too."""
import json
import os
import socket
import threading

from .log import log

MAX_HEADER = 64 * 1024


class Response:
    def __init__(self, status, body=None, headers=()):
        self.status, self.body, self.headers = status, body, list(headers)


def fault(status, message):
    return Response(status, {"fault_message": message})


def encode(resp, server_name):
    # Status line without a reason phrase, then Server and Connection, as
    # micro_http (Firecracker's HTTP crate) writes them; 204 has no body and
    # no Content-Length.
    head = ["HTTP/1.1 %d " % resp.status, "Server: %s" % server_name, "Connection: keep-alive"]
    head += ["%s: %s" % h for h in resp.headers]
    payload = b""
    if resp.status != 204:
        if resp.body is None:
            payload = b""  # e.g. cloud-hypervisor's 200 to vmm.shutdown, bare 400s
        elif isinstance(resp.body, (bytes, str)):
            payload = resp.body.encode() if isinstance(resp.body, str) else resp.body
        else:
            payload = json.dumps(resp.body, separators=(",", ":")).encode()
        head += ["Content-Type: application/json", "Content-Length: %d" % len(payload)]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


class Server:
    """handler(method, path, body_or_None) -> Response.
    faults(method, path) -> None | "400" | "close" | "hang" | "close-mid"."""

    def __init__(self, path, handler, server_name, faults=None):
        self.path, self.handler, self.server_name = path, handler, server_name
        self.faults = faults or (lambda m, p: None)
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)  # raises OSError(EADDRINUSE) if the path exists
        self.sock.listen(64)
        self.closing = False

    def serve_forever(self):
        threading.Thread(target=self._accept, daemon=True, name="api-accept").start()

    def close(self):
        self.closing = True
        try:
            self.sock.close()
        except OSError:
            pass

    def _accept(self):
        while not self.closing:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._conn, args=(conn,), daemon=True).start()

    def _conn(self, conn):
        buf = b""
        try:
            while True:
                req, buf = _read_request(conn, buf)
                if req is None:
                    return
                method, path, headers, body = req
                action = self.faults(method, path)
                if action in ("close", "hang", "close-mid"):
                    log("fault injected:", method, path, "->", action)
                    if action == "hang":
                        threading.Event().wait()
                    if action == "close-mid":
                        full = encode(Response(204), self.server_name)
                        conn.sendall(full[: len(full) // 2])
                    return
                if action == "400":
                    resp = fault(400, "Fault injected by the emulator (FAKE_*_FAULTS) for %s %s." % (method, path))
                else:
                    with self.lock:
                        resp = self.handler(method, path, body)
                conn.sendall(encode(resp, self.server_name))
                if headers.get("connection", "").lower() == "close":
                    return
        except (OSError, ValueError) as e:
            if not isinstance(e, (BrokenPipeError, ConnectionResetError)):
                log("api connection error:", e)
        finally:
            try:
                conn.close()
            except OSError:
                pass


class _Bad(ValueError):
    pass


def _read_request(conn, buf):
    """-> ((method, path, headers, body|None), rest) or (None, b'') at EOF."""
    while b"\r\n\r\n" not in buf:
        if len(buf) > MAX_HEADER:
            raise _Bad("headers too long")
        chunk = conn.recv(65536)
        if not chunk:
            return None, b""
        buf += chunk
    head, buf = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise _Bad("bad request line %r" % lines[0])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "0") or 0)
    while len(buf) < n:
        chunk = conn.recv(65536)
        if not chunk:
            return None, b""
        buf += chunk
    body, buf = buf[:n], buf[n:]
    path = parts[1].split("?", 1)[0]
    # micro_http: no (or empty) body is "no body", which the router treats
    # differently from an empty JSON object.
    return (parts[0], path, headers, body if n else None), buf


def remove_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass
