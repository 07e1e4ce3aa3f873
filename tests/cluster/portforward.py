"""Port-forward on the process node: the API server's upgraded connection, spliced to a pod's ports.

A kubelet's streaming server speaks two port-forward protocols, and so does this node:

* :class:`SpdyTunnel` -- SPDY/3.1 (``portforward.k8s.io``): per forwarded connection the client
  opens an *error* and a *data* stream carrying the same ``requestID`` and ``port`` headers;
  the data stream is the TCP connection, half-closes included; a failure is written to the
  error stream, then both are reset. kubectl's frames are this, however the API server carries
  them (:mod:`kubeletapi`).
* :class:`WebSocketTunnel` -- ``v4.channel.k8s.io``: the ports are in the query (``port=``);
  channel ``2i`` is port i's data, ``2i+1`` its errors, each message starts with its channel
  byte, and the server's first message on each channel is the port (2 bytes, little endian).
  One TCP connection per port; the session ends (close frame) when every port's has. The
  kubernetes Python client's ``kubernetes.stream.portforward`` speaks this.

:func:`splice` runs one such connection to its end in one thread: the TLS socket and the
pod's sockets are non-blocking and polled together, so nothing waits on a peer that is
itself waiting (a large body one way while the reply flows the other).
"""

from __future__ import annotations

import contextlib
import dataclasses
import select
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

import spdy
from websockets.frames import Opcode
from websockets.protocol import Protocol as WebSocketProtocol

POLL_SECONDS = 0.5
RECV_BYTES = 64 * 1024
TLS_RECORD = 16 * 1024  # the most written to the TLS socket at once: one record
BACKLOG_BYTES = 8 * 1024 * 1024  # stop reading a side while this much waits for the other


@dataclasses.dataclass(frozen=True)
class Open:
    """Connect to the pod's ``port``; ``key`` names that connection from now on."""

    key: int
    port: int


@dataclasses.dataclass(frozen=True)
class ToPod:
    key: int
    data: bytes


@dataclasses.dataclass(frozen=True)
class ClientDone:
    """The client sends nothing more on this connection (its write side is closed)."""

    key: int


@dataclasses.dataclass(frozen=True)
class Drop:
    """The client gave this connection up: close the pod's side."""

    key: int


@dataclasses.dataclass(frozen=True)
class Hangup:
    """The client ended the whole session."""


Event = Open | ToPod | ClientDone | Drop | Hangup


class Tunnel(Protocol):
    """One port-forward protocol, without I/O: client bytes in, events out; pod output in, client bytes out."""

    def start(self) -> list[Event]: ...
    def receive(self, data: bytes) -> list[Event]: ...
    def to_client(self, key: int, data: bytes) -> None: ...
    def pod_closed(self, key: int) -> None: ...
    def failed(self, key: int, message: str) -> None: ...
    def done(self) -> bool: ...  # nothing more to forward: close once data_to_send is written
    def data_to_send(self) -> bytes: ...


# --------------------------------------------------------------------------- SPDY/3.1


@dataclasses.dataclass
class _StreamPair:
    port: int
    data: int | None = None  # stream ids
    error: int | None = None


class SpdyTunnel:
    """``portforward.k8s.io`` over SPDY/3.1; a connection's key is its data stream's id."""

    def __init__(self) -> None:
        self.session = spdy.ServerSession()
        self._pairs: dict[str, _StreamPair] = {}  # by requestID
        self._forwarding: dict[int, _StreamPair] = {}  # by data stream id
        self._closing = False

    def start(self) -> list[Event]:
        return []

    def receive(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        for ev in self.session.receive(data):
            if isinstance(ev, spdy.StreamOpened):
                events += self._opened(ev)
            elif isinstance(ev, spdy.StreamData):
                pair = self._forwarding.get(ev.stream_id)
                if pair is None:
                    continue  # the error stream (the client only closes it) or one already dropped
                if ev.data:
                    events.append(ToPod(ev.stream_id, ev.data))
                if ev.fin:
                    events.append(ClientDone(ev.stream_id))
            elif isinstance(ev, spdy.StreamReset):
                pair = next((p for p in self._forwarding.values() if ev.stream_id in (p.data, p.error)), None)
                if pair is not None and pair.data is not None:
                    del self._forwarding[pair.data]
                    events.append(Drop(pair.data))
            elif isinstance(ev, spdy.SessionClosed):
                self._closing = True
        return events

    def _opened(self, ev: spdy.StreamOpened) -> list[Event]:
        """Accept a stream as a kubelet does (headers checked, reply sent); a pair complete opens a forward."""
        kind, port = ev.headers.get("streamtype", ""), ev.headers.get("port", "")
        if kind not in ("data", "error") or not port.isdigit() or not 0 < int(port) < 65536:
            self.session.reset(ev.stream_id, spdy.RST_REFUSED_STREAM)
            return []
        self.session.reply(ev.stream_id)
        # Without a requestID, client-go's pairs are (error n, data n+2): the kubelet's fallback.
        request = ev.headers.get("requestid") or str(ev.stream_id - (2 if kind == "data" else 0))
        pair = self._pairs.setdefault(request, _StreamPair(int(port)))
        setattr(pair, kind, ev.stream_id)
        if pair.data is None or pair.error is None:
            return []
        del self._pairs[request]
        self._forwarding[pair.data] = pair
        return [Open(pair.data, pair.port)]

    def to_client(self, key: int, data: bytes) -> None:
        if key in self._forwarding:
            self.session.data(key, data)

    def pod_closed(self, key: int) -> None:
        pair = self._forwarding.pop(key, None)
        if pair is not None and pair.error is not None:
            self.session.data(key, b"", fin=True)
            self.session.data(pair.error, b"", fin=True)

    def failed(self, key: int, message: str) -> None:
        pair = self._forwarding.pop(key, None)
        if pair is not None and pair.error is not None:
            self.session.data(pair.error, message.encode())
            self.session.reset(key)
            self.session.reset(pair.error)

    def done(self) -> bool:
        return self._closing and not self._forwarding

    def data_to_send(self) -> bytes:
        return self.session.data_to_send()


# --------------------------------------------------------------------------- WebSocket channels

CHANNEL_PROTOCOL = "v4.channel.k8s.io"


class WebSocketTunnel:
    """``v4.channel.k8s.io``: one connection per requested port; port i's key is i.

    ``protocol``: the server side's framing (:mod:`websockets`, sans I/O), past the handshake.
    """

    def __init__(self, protocol: WebSocketProtocol, ports: Sequence[int]) -> None:
        self.protocol = protocol
        self.ports = list(ports)
        self._open = set(range(len(self.ports)))
        self._message = bytearray()  # a fragmented message so far

    def start(self) -> list[Event]:
        for i, port in enumerate(self.ports):
            for channel in (2 * i, 2 * i + 1):
                self.protocol.send_binary(bytes([channel]) + port.to_bytes(2, "little"))
        return [Open(i, port) for i, port in enumerate(self.ports)]

    def receive(self, data: bytes) -> list[Event]:
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        events: list[Event] = []
        for frame in self.protocol.events_received():
            if frame.opcode == Opcode.CLOSE:
                events.append(Hangup())
            elif frame.opcode in (Opcode.BINARY, Opcode.CONT):
                self._message += frame.data
                if frame.fin:
                    message, self._message = bytes(self._message), bytearray()
                    channel = message[0] if message else 1
                    if channel % 2 == 0 and channel // 2 in self._open and len(message) > 1:
                        events.append(ToPod(channel // 2, message[1:]))  # odd: an error channel, server to client
        if not data:
            events.append(Hangup())
        return events

    def to_client(self, key: int, data: bytes) -> None:
        if key in self._open:
            self.protocol.send_binary(bytes([2 * key]) + data)

    def pod_closed(self, key: int) -> None:
        self._open.discard(key)
        if not self._open:
            self.protocol.send_close()  # no half-close in v4: the session ends with its last connection

    def failed(self, key: int, message: str) -> None:
        if key in self._open:
            self.protocol.send_binary(bytes([2 * key + 1]) + message.encode())
        self.pod_closed(key)

    def done(self) -> bool:
        return not self._open

    def data_to_send(self) -> bytes:
        return b"".join(self.protocol.data_to_send())


# --------------------------------------------------------------------------- the splice


@dataclasses.dataclass
class _PodConnection:
    sock: socket.socket
    out: bytearray = dataclasses.field(default_factory=bytearray)  # from the client, not yet written
    client_done: bool = False
    write_closed: bool = False


class _Splice:
    def __init__(self, conn: ssl.SSLSocket, tunnel: Tunnel, dial: Callable[[int], socket.socket]) -> None:
        self.conn, self.tunnel, self.dial = conn, tunnel, dial
        self.pods: dict[int, _PodConnection] = {}
        self.out = bytearray()  # to the client
        self.client_open = True

    def handle(self, events: list[Event]) -> None:
        for ev in events:
            if isinstance(ev, Open):
                try:
                    sock = self.dial(ev.port)
                except OSError as exc:
                    self.tunnel.failed(ev.key, str(exc))
                    continue
                sock.setblocking(False)
                self.pods[ev.key] = _PodConnection(sock)
            elif isinstance(ev, ToPod) and ev.key in self.pods:
                self.pods[ev.key].out += ev.data
            elif isinstance(ev, ClientDone) and ev.key in self.pods:
                self.pods[ev.key].client_done = True
            elif isinstance(ev, Drop) and ev.key in self.pods:
                self.pods.pop(ev.key).sock.close()
            elif isinstance(ev, Hangup):
                self.client_open = False

    def read_client(self) -> None:
        while True:
            try:
                data = self.conn.recv(RECV_BYTES)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                return
            except (OSError, ssl.SSLError):
                data = b""
            self.handle(self.tunnel.receive(data))
            if not data:
                self.client_open = False
                return
            if not self.conn.pending():
                return

    def write_client(self) -> None:
        while self.out:
            try:
                sent = self.conn.send(self.out[:TLS_RECORD])
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                return
            except (OSError, ssl.SSLError):
                self.client_open = False
                return
            del self.out[:sent]

    def read_pod(self, key: int) -> None:
        pod = self.pods[key]
        try:
            data = pod.sock.recv(RECV_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.tunnel.to_client(key, data)
            return
        self.pods.pop(key).sock.close()  # the pod closed it: so does the forward (FIN / end to the client)
        self.tunnel.pod_closed(key)

    def write_pod(self, key: int) -> None:
        pod = self.pods[key]
        try:
            sent = pod.sock.send(pod.out)
        except BlockingIOError:
            return
        except OSError:
            self.pods.pop(key).sock.close()
            self.tunnel.pod_closed(key)
            return
        del pod.out[:sent]

    def run(self, stop: threading.Event) -> None:
        self.handle(self.tunnel.start())
        while not stop.is_set():
            self.out += self.tunnel.data_to_send()
            for pod in self.pods.values():  # the client's half-close reaches the pod once its data has
                if pod.client_done and not pod.out and not pod.write_closed:
                    with contextlib.suppress(OSError):
                        pod.sock.shutdown(socket.SHUT_WR)
                    pod.write_closed = True
            if not self.client_open or (self.tunnel.done() and not self.out):
                return
            backlog = sum(len(p.out) for p in self.pods.values())
            readers: list[socket.socket] = [self.conn] if backlog < BACKLOG_BYTES else []
            if len(self.out) < BACKLOG_BYTES:
                readers += [p.sock for p in self.pods.values()]
            writers = ([self.conn] if self.out else []) + [p.sock for p in self.pods.values() if p.out]
            if self.conn.pending():  # decrypted bytes already in hand: select would not see them
                readable, writable = [self.conn], []
            else:
                readable, writable, _ = select.select(readers, writers, [], POLL_SECONDS)
            by_sock = {p.sock: key for key, p in self.pods.items()}
            if self.conn in writable:
                self.write_client()
            for sock in writable:
                if sock in by_sock and by_sock[sock] in self.pods:
                    self.write_pod(by_sock[sock])
            if self.conn in readable:
                self.read_client()
            for sock in readable:
                if sock in by_sock and by_sock[sock] in self.pods:
                    self.read_pod(by_sock[sock])

    def close(self) -> None:
        for pod in self.pods.values():
            pod.sock.close()
        self.pods.clear()
        with contextlib.suppress(OSError, ssl.SSLError):
            self.conn.setblocking(True)
            self.conn.settimeout(2)
            self.conn.sendall(self.out + self.tunnel.data_to_send())
        with contextlib.suppress(OSError):
            self.conn.shutdown(socket.SHUT_RDWR)


def splice(
    conn: ssl.SSLSocket, tunnel: Tunnel, dial: Callable[[int], socket.socket], stop: threading.Event
) -> None:
    """Forward between the client (``conn``, already upgraded) and the pod until either side is done."""
    conn.setblocking(False)
    run = _Splice(conn, tunnel, dial)
    try:
        run.run(stop)
    finally:
        run.close()
