"""Networks that fail the way real ones do, for the fleet fault tests.

- :class:`TcpRelay`: a TCP relay in front of PostgreSQL whose connections can be cut (every
  socket reset at once, new ones refused), as when a worker's route to the database breaks.
- :class:`TestHost`: a network namespace joined to this one by a veth pair (this machine's own
  test host, on addresses of its own), whose link can be taken down: packets then vanish silently,
  no reset, as when a cable or a switch dies.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import threading
from dataclasses import dataclass, field


class TcpRelay:
    def __init__(self, target: tuple[str, int], listen: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self.target = target
        self._server = socket.create_server(listen, reuse_port=False)
        self.address = self._server.getsockname()[:2]
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._open = True
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.address[1])

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if not self._open:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        """Reset every connection and refuse new ones until :meth:`restore`."""
        self._open = False
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for s in sockets:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                s.close()
            except OSError:
                pass

    def restore(self) -> None:
        self._open = True

    def close(self) -> None:
        self.cut()
        self._server.close()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def namespaces_available() -> str | None:
    """None when this sandbox lets us make network namespaces, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    name = "igprobe" + secrets.token_hex(3)
    try:
        _ip("netns", "add", name)
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"`ip netns add` is not allowed here: {exc}"
    _ip("netns", "del", name)
    return None


@dataclass
class TestHost:
    """A namespace ``name`` with ``address`` on its end of a veth pair; ``gateway`` is this
    namespace's end. Addresses come from a /30 of 10.231.0.0/16 picked at random, used by nothing
    else: the two ends are the only hosts on that link."""

    name: str = field(default_factory=lambda: "ig" + secrets.token_hex(3))
    subnet: int = field(default_factory=lambda: secrets.randbelow(16000))

    def __post_init__(self) -> None:
        self.host_if = f"{self.name}h"
        self.peer_if = f"{self.name}p"
        a, b = divmod(self.subnet * 4, 256)
        self.gateway = f"10.231.{a}.{b + 1}"
        self.address = f"10.231.{a}.{b + 2}"

    def __enter__(self) -> "TestHost":
        _ip("netns", "add", self.name)
        try:
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.peer_if)
            _ip("link", "set", self.peer_if, "netns", self.name)
            _ip("addr", "add", f"{self.gateway}/30", "dev", self.host_if)
            _ip("link", "set", self.host_if, "up")
            _ip("-n", self.name, "addr", "add", f"{self.address}/30", "dev", self.peer_if)
            _ip("-n", self.name, "link", "set", self.peer_if, "up")
            _ip("-n", self.name, "link", "set", "lo", "up")
        except Exception:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def link(self, up: bool) -> None:
        """Take the link down (packets vanish silently) or up again."""
        _ip("link", "set", self.host_if, "up" if up else "down")
