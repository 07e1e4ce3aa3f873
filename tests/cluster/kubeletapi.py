"""The process node's kubelet API: what the API server calls for ``kubectl logs`` and ``kubectl port-forward``.

An HTTPS server at the node's InternalIP and ``daemonEndpoints.kubeletEndpoint.Port``,
with a serving certificate from the control plane's CA (the API server checks it:
``--kubelet-certificate-authority``). Clients present a certificate from that CA and only
the API server's (``--kubelet-client-certificate``, user :data:`controlplane.KUBELET_CLIENT_USER`)
is let in: none is 401, another user 403, as a kubelet's authorizer would answer them.

* ``GET /containerLogs/{namespace}/{pod}/{container}``: the container's output, current
  run or ``previous``, init containers too, with ``follow`` (streamed, flushed as it comes,
  until that run ends or the client goes), ``tailLines`` (``tail``) and ``limitBytes``.
  The node keeps no per-line times, so ``timestamps``, ``sinceSeconds`` and ``sinceTime``
  are refused (400), as is a ``stream`` other than ``All`` (stdout and stderr share one file).
  Errors have a kubelet's words (``... is waiting to start: ContainerCreating``).
* ``/portForward/{namespace}/{pod}``: to the pod's ``status.podIP``, in both protocols of a
  kubelet's streaming server (:mod:`portforward`). Why both, and why the API server keeps
  its defaults (v1.36.3): kubectl's port-forward is SPDY/3.1 whichever way it goes. With
  ``PortForwardWebsockets`` (beta, on) kubectl tunnels SPDY in a WebSocket and the API
  server unwraps it and speaks SPDY to the kubelet (it passes the tunnel through only to a
  node that declares ``ExtendWebSocketsToKubelet`` in ``status.declaredFeatures``; this one
  declares nothing); with the gate off the tunnel's upgrade reaches the kubelet, which
  refuses its subprotocol (403), and kubectl falls back to plain SPDY. So turning the gate
  off would not spare SPDY. The kubernetes Python client speaks ``v4.channel.k8s.io``,
  which is no tunnel: the API server passes that upgrade through unchanged, gate on or off.
* Nothing else: exec, attach, run, metrics, stats, pods, checkpoint... answer 501 naming
  what is missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import select
import socket
import ssl
import threading
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Protocol

import portforward
from websockets.datastructures import Headers
from websockets.http11 import Request
from websockets.protocol import Protocol as WebSocketProtocol
from websockets.protocol import Side, State
from websockets.server import ServerProtocol

log = logging.getLogger(__name__)

FOLLOW_POLL_SECONDS = 0.1
READ_BYTES = 64 * 1024
HANDSHAKE_SECONDS = 60  # a TLS handshake in a thread of a busy test process, on 2 loaded cores
WEBSOCKET_MAX_MESSAGE = 16 * 1024 * 1024  # the Python client sends up to 1 MiB a message
SPDY_PROTOCOL = "portforward.k8s.io"
LOGS_PATH = re.compile(r"^/containerLogs/([^/]+)/([^/]+)/([^/]+)$")
PORT_FORWARD_PATH = re.compile(r"^/portForward/([^/]+)/([^/]+)$")
TIMELESS = ("timestamps", "sinceSeconds", "sinceTime")  # log options the node cannot honour


class KubeletError(Exception):
    """A request the node answers with an error: ``status`` and a kubelet's message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class LogRun(Protocol):
    """One run of a container, as its log holds it."""

    log: Path
    start: int  # where its output begins in ``log``
    end: int | None  # where it ends, once a later run began

    def finished(self) -> bool: ...


class Host(Protocol):
    """What the API needs from the node; lookups raise :class:`KubeletError` (404, 400)."""

    def log_run(self, namespace: str, pod: str, container: str, previous: bool) -> LogRun: ...
    def pod_address(self, namespace: str, pod: str) -> tuple[str, str]: ...  # (podIP, uid)


@dataclasses.dataclass(frozen=True)
class LogOptions:
    follow: bool = False
    previous: bool = False
    tail_lines: int | None = None
    limit_bytes: int | None = None

    @classmethod
    def parse(cls, query: dict[str, list[str]]) -> LogOptions:
        """The query the API server sends (``PodLogOptions``); what the node cannot do is refused."""

        def flag(name: str) -> bool:
            value = query.get(name, ["false"])[-1]
            if value not in ("true", "false", "1", "0"):
                raise KubeletError(400, f"{name}={value!r}: expected true or false")
            return value in ("true", "1")

        def number(name: str, least: int) -> int | None:
            if name not in query:
                return None
            value = query[name][-1]
            if not value.lstrip("-").isdigit() or int(value) < least:
                raise KubeletError(422, f"{name}={value!r}: expected an integer >= {least}")
            return int(value)

        for name in TIMELESS:
            if name in query and (name != "timestamps" or flag(name)):
                raise KubeletError(400, f"{name}: the process node keeps no time per log line (see kubeletapi.py)")
        if query.get("stream", ["All"])[-1] != "All":
            raise KubeletError(400, "stream: the process node writes stdout and stderr to one log; only All")
        if query.get("tail", [""])[-1] not in ("", "all"):  # the older name of tailLines
            query = {**query, "tailLines": query["tail"]}
        return cls(flag("follow"), flag("previous"), number("tailLines", 0), number("limitBytes", 1))


def tail_start(run: LogRun, lines: int) -> int:
    """Where the last ``lines`` lines of the run's output so far begin (a partial last line counts)."""
    with open(run.log, "rb") as fh:
        fh.seek(run.start)
        data = fh.read() if run.end is None else fh.read(max(0, run.end - run.start))
    kept = data.splitlines(keepends=True)[-lines:] if lines else []
    return run.start + len(data) - sum(len(line) for line in kept)


class KubeletServer:
    """Serve the kubelet API for ``host`` on ``address``:(a free port) until :meth:`stop`.

    A request that fails on something other than a :class:`KubeletError` (a bug here) is
    answered 500 and added to ``errors`` (the node's, which its tests check).
    """

    def __init__(
        self, host: Host, cert: Path, key: Path, client_ca: Path, user: str, address: str, errors: list[str]
    ) -> None:
        self.host = host
        self.user = user
        self.errors = errors
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(str(cert), str(key))
        self.tls.load_verify_locations(cafile=str(client_ca))
        self.tls.verify_mode = ssl.CERT_OPTIONAL  # a client without one gets 401, as from a kubelet
        self.stopping = threading.Event()
        self._httpd = _Server((address, 0), _Handler)
        self._httpd.kubelet = self
        self.address, self.port = address, self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name=f"kubelet-api-{self.port}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting; end the follows and port-forwards under way."""
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # not socketserver's 5: follows, logs and port-forwards arrive in bursts
    kubelet: KubeletServer

    def handle_error(self, request: socket.socket | tuple[bytes, socket.socket], client_address: object) -> None:
        log.debug("kubelet API: connection from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    rbufsize = 0  # unbuffered: after an upgrade the socket is read directly, nothing left in a buffer
    server: _Server

    def setup(self) -> None:  # TLS here, in the connection's thread, not in the accepting one
        self.request.settimeout(HANDSHAKE_SECONDS)
        self.request = self.server.kubelet.tls.wrap_socket(self.request, server_side=True)
        self.request.settimeout(None)
        super().setup()

    def finish(self) -> None:
        super().finish()
        self.request.close()  # the TLS socket: the server closes only the plain one it accepted

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        log.debug("kubelet API %s: " + format, self.address_string(), *args)

    # ------------------------------------------------------------------ routing

    def do_GET(self) -> None:  # noqa: N802 - http.server's names
        self._route()

    def do_POST(self) -> None:  # noqa: N802 - SPDY upgrades come as POST
        self._route()

    def _route(self) -> None:
        kubelet = self.server.kubelet
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        try:
            self._authorize(kubelet)
            if m := LOGS_PATH.match(url.path):
                namespace, pod, container = (urllib.parse.unquote(p) for p in m.groups())
                options = LogOptions.parse(query)
                run = kubelet.host.log_run(namespace, pod, container, options.previous)
                self._send_log(run, options, kubelet.stopping)
            elif m := PORT_FORWARD_PATH.match(url.path):
                namespace, pod = (urllib.parse.unquote(p) for p in m.groups())
                self._port_forward(kubelet, namespace, pod, query)
            else:
                what = url.path.strip("/").split("/")[0]
                served = "the process node's kubelet API serves containerLogs and portForward only"
                raise KubeletError(501, f"/{what}: {served}")
        except KubeletError as exc:
            self._reply(exc.status, str(exc))
        except Exception as exc:  # noqa: BLE001 - reported to the node's errors, answered 500
            kubelet.errors.append(f"kubelet API {self.command} {self.path}: {type(exc).__name__}: {exc}")
            with contextlib.suppress(OSError, ssl.SSLError):
                self._reply(500, f"{type(exc).__name__}: {exc}")

    def _authorize(self, kubelet: KubeletServer) -> None:
        cert = self.connection.getpeercert()
        if not cert:
            raise KubeletError(401, "Unauthorized")
        subject = dict(pair for rdn in cert.get("subject", ()) for pair in rdn)
        user = subject.get("commonName", "")
        if user != kubelet.user:
            raise KubeletError(403, f"Forbidden (user={user}, verb=get, resource=nodes, subresource=proxy)")

    def _reply(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        body = text.encode()
        self.send_response(status)
        for name, value in {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    # ------------------------------------------------------------------ logs

    def _send_log(self, run: LogRun, options: LogOptions, stopping: threading.Event) -> None:
        """Chunked, one chunk per read: with ``follow`` each line reaches the client as it is written."""
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        pos = run.start if options.tail_lines is None else tail_start(run, options.tail_lines)
        budget = options.limit_bytes
        with open(run.log, "rb") as fh, contextlib.suppress(OSError, ssl.SSLError):
            while not stopping.is_set():
                finished = run.finished()  # before the read: what it wrote before ending is read now
                fh.seek(pos)
                chunk = fh.read(READ_BYTES)
                end = run.end  # after the read: a later run's first line is never shown as this one's
                if end is not None:
                    chunk, finished = chunk[: max(0, end - pos)], True
                if budget is not None:
                    chunk = chunk[:budget]
                    budget -= len(chunk)
                if chunk:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    pos += len(chunk)
                if budget == 0:
                    break
                if chunk:
                    continue
                if not options.follow or finished or self._client_gone():
                    break
                stopping.wait(FOLLOW_POLL_SECONDS)
            self.wfile.write(b"0\r\n\r\n")

    def _client_gone(self) -> bool:
        """Readable while we stream the answer: the client closed (it sends nothing else on this connection)."""
        readable, _, _ = select.select([self.connection], [], [], 0)
        return bool(readable)

    # ------------------------------------------------------------------ port-forward

    def _port_forward(self, kubelet: KubeletServer, namespace: str, pod: str, query: dict[str, list[str]]) -> None:
        ip, uid = kubelet.host.pod_address(namespace, pod)

        def dial(port: int) -> socket.socket:
            try:
                return socket.create_connection((ip, port), timeout=5)
            except OSError as exc:
                raise OSError(
                    f"error forwarding port {port} to pod {pod}, uid {uid}: dial tcp {ip}:{port}: {exc.strerror or exc}"
                ) from exc

        upgrade = self.headers.get("Upgrade", "").lower()
        tunnel: portforward.Tunnel | None
        if upgrade == "websocket":
            tunnel = self._websocket_tunnel(query)
            if tunnel is None:
                return  # the handshake's refusal is answered
        elif upgrade == "spdy/3.1":
            self._spdy_handshake()
            tunnel = portforward.SpdyTunnel()
        else:
            raise KubeletError(400, "unable to upgrade: missing upgrade headers in request (SPDY/3.1 or websocket)")
        self.close_connection = True
        portforward.splice(self.connection, tunnel, dial, kubelet.stopping)

    def _spdy_handshake(self) -> None:
        offered = [p.strip() for v in self.headers.get_all("X-Stream-Protocol-Version") or [] for p in v.split(",")]
        if SPDY_PROTOCOL not in offered:
            negotiation = f"client supports {offered}, server accepts [{SPDY_PROTOCOL}]"
            raise KubeletError(403, f"unable to upgrade: unable to negotiate protocol: {negotiation}")
        self.send_response(101, "Switching Protocols")
        self.send_header("Connection", "Upgrade")
        self.send_header("Upgrade", "SPDY/3.1")
        self.send_header("X-Stream-Protocol-Version", SPDY_PROTOCOL)
        self.end_headers()

    def _websocket_tunnel(self, query: dict[str, list[str]]) -> portforward.WebSocketTunnel | None:
        ports: list[int] = []
        for value in query.get("port", []):
            for p in value.split(","):
                if not p.isdigit() or not 0 < int(p) < 65536:
                    raise KubeletError(400, f"unable to parse {value!r} as a port")
                ports.append(int(p))
        if not ports:
            raise KubeletError(400, 'query parameter "port" is required')

        offered = [p.strip() for v in self.headers.get_all("Sec-WebSocket-Protocol") or [] for p in v.split(",")]
        if offered and portforward.CHANNEL_PROTOCOL not in offered:  # none offered: binary channels, as v4
            raise KubeletError(
                403, f"requested protocol(s) are not supported: {offered}; supports {[portforward.CHANNEL_PROTOCOL]}"
            )

        def select_subprotocol(protocol: ServerProtocol, offered: list[str]) -> str | None:
            return portforward.CHANNEL_PROTOCOL if offered else None

        handshake = ServerProtocol(select_subprotocol=select_subprotocol)
        response = handshake.accept(Request(self.path, Headers(self.headers.items())))
        handshake.send_response(response)
        self.wfile.write(b"".join(handshake.data_to_send()))
        if response.status_code != HTTPStatus.SWITCHING_PROTOCOLS:
            self.close_connection = True
            return None
        # The handshake's protocol parsed no request (http.server did), so it would read the
        # first frames as one: the frames get a protocol that starts open.
        frames = WebSocketProtocol(Side.SERVER, state=State.OPEN, max_size=WEBSOCKET_MAX_MESSAGE)
        return portforward.WebSocketTunnel(frames, ports)

