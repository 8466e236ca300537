"""Host side of the vsock stand-in.

No vsock here, so each stand-in port is a QEMU virtserialport named
org.vouch.vsock.PORT whose chardev is a unix socket server in our temp dir.
A host client speaks Firecracker's protocol on uds_path (docs/vsock.md):
"CONNECT <port>\\n" -> "OK <host port>\\n", then raw bytes. We accept it only
if the guest has the port open (QEMU's VSERPORT_CHANGE events tell us) and
nobody else holds it; otherwise the connection is closed, which is what a
client of the real device sees when no guest listener exists."""
import os
import socket
import threading

from .log import log

CONNECT_BUF = 32  # the muxer reads the command into a 32-byte buffer


def port_name(port):
    return "org.vouch.vsock.%d" % port


class Bridge:
    def __init__(self, uds_path, ports, sock_dir, fault=None, bus="virtio-serial-device"):
        # bus: virtio-serial-device (virtio-mmio, Firecracker-like) or
        # virtio-serial-pci (cloud-hypervisor's guests see PCI).
        self.uds_path, self.fault, self.bus = uds_path, fault, bus
        self.chardev = {p: os.path.join(sock_dir, "vs-%d.sock" % p) for p in ports}
        self.port_of_id = {"vsport%d" % p: p for p in ports}
        self.open = set()   # ports whose guest end is open
        self.busy = set()   # ports with a host connection relaying
        # Ports still held by a session from before a restore: port -> whether
        # the event for the restored (stale) open state has been seen.
        self.stale = {}
        self.lock = threading.Lock()
        self.next_local = 1 << 30  # host-side ports: [1<<30, 1<<31), round robin
        self.sock = None

    def qemu_args(self):
        if not self.chardev:
            return []
        args = ["-device", self.bus]
        for p, path in sorted(self.chardev.items()):
            args += ["-chardev", "socket,id=vs%d,path=%s,server=on,wait=off" % (p, path),
                     "-device", "virtserialport,chardev=vs%d,name=%s,id=vsport%d" % (p, port_name(p), p)]
        return args

    def on_qmp_event(self, name, data):
        if name != "VSERPORT_CHANGE":
            return
        port = self.port_of_id.get(data.get("id"))
        if port is not None:
            with self.lock:
                if port in self.stale:
                    # Until the guest drops its pre-restore session, the port
                    # does not count as a listener. QEMU reports the restored
                    # open state once on load, then throttles this event to
                    # one a second keeping the last state, so a close and
                    # reopen may arrive as one more "open".
                    if not data.get("open"):
                        self.stale[port] = True
                    elif not self.stale[port]:
                        self.stale[port] = True
                    else:
                        del self.stale[port]
                        self.open.add(port)
                else:
                    (self.open.add if data.get("open") else self.open.discard)(port)
            log("vsock: guest", "opened" if data.get("open") else "closed", "port", port)

    def guest_reset(self):
        with self.lock:
            self.open.clear()

    def busy_ports(self):
        """Ports with a host connection now (recorded in a snapshot)."""
        with self.lock:
            return sorted(self.busy)

    def before_restore(self, busy=None):
        """busy: the ports that had a session when the snapshot was taken
        (None: assume all did). A port idle then was restored listening: the
        open event QEMU reports on load is the truth for it."""
        with self.lock:
            self.open.clear()
            self.stale = {p: False for p in self.chardev if busy is None or p in busy}

    def after_restore(self):
        """Firecracker resets the guest's vsock connections when it loads a
        snapshot (docs/snapshotting/snapshot-support.md, vsock): the restored
        guest must see its old streams end. Here the old stream is the
        virtserialport session the snapshot was taken in: connecting and
        closing each chardev tells the guest the host side went away, and the
        port is a listener again only once the guest has closed it and
        opened it afresh (VSERPORT_CHANGE)."""
        for port, path in self.chardev.items():
            if port not in self.stale:
                continue  # idle at snapshot time: nothing to reset
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
            except OSError as e:
                log("vsock: cannot reset", path, e)
            finally:
                s.close()

    def listen(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.uds_path)
        self.sock.listen(16)
        threading.Thread(target=self._accept, daemon=True, name="vsock-accept").start()

    def close(self):
        if self.sock:
            self.sock.close()
            try:
                os.unlink(self.uds_path)
            except OSError:
                pass

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _read_connect(self, conn):
        buf = b""
        conn.settimeout(10)
        while not buf.endswith(b"\n") and len(buf) < CONNECT_BUF:
            b = conn.recv(1)
            if not b:
                return None
            buf += b
        words = buf.decode("ascii", "replace").split()
        if len(words) != 2 or words[0].lower() != "connect" or not words[1].isdigit():
            return None
        conn.settimeout(None)
        return int(words[1])

    def _serve(self, conn):
        port, guest = None, None
        try:
            port = self._read_connect(conn)
            if port is None or self.fault == "refuse":
                log("vsock: refusing connection (bad request, or fault)")
                return
            with self.lock:
                ok = port in self.chardev and port in self.open and port not in self.busy
                if ok:
                    self.busy.add(port)
                    local = self.next_local
                    self.next_local = local + 1 if local + 1 < (1 << 31) else (1 << 30)
            if not ok:
                log("vsock: no guest listener on port", port, "- closing")
                port = None
                return
            guest = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            guest.connect(self.chardev[port])
            conn.sendall(b"OK %d\n" % local)
            log("vsock: connected host port", local, "to guest port", port)
            self._relay(conn, guest)
        except OSError as e:
            log("vsock: connection ended:", e)
        finally:
            for s in (conn, guest):
                if s:
                    s.close()
            if port is not None:
                with self.lock:
                    self.busy.discard(port)

    def _relay(self, host, guest):
        # Either side closing ends both, so the guest sees the host go away.
        done = threading.Event()

        def pump(src, dst):
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    if dst is not None:
                        dst.sendall(data)
            except OSError:
                pass
            done.set()

        silent = self.fault == "silent"
        threading.Thread(target=pump, args=(host, guest), daemon=True).start()
        threading.Thread(target=pump, args=(guest, None if silent else host), daemon=True).start()
        done.wait()
        for s in (host, guest):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
