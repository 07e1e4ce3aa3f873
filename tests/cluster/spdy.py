"""SPDY/3.1, the server side of one session, without I/O: what a kubelet's port-forward speaks.

kubectl's port-forward frames are SPDY whichever way they travel (see :mod:`kubeletapi`), and
the Kubernetes side of it (``github.com/moby/spdystream``, under ``k8s.io/streaming``) uses
a small part of the protocol, which is what this implements:

* frames: SYN_STREAM (the client opens a stream; header block), SYN_REPLY (the server
  accepts it), DATA (with FIN: that side is done), RST_STREAM, PING (echoed), GOAWAY;
  SETTINGS, WINDOW_UPDATE and HEADERS are read and ignored -- spdystream sends and honours no
  flow control, so neither does this side;
* header blocks: one zlib stream per direction for the whole session, primed with the
  SPDY/3 dictionary (:data:`HEADER_DICTIONARY`), each block sync-flushed.

Feed the bytes read with :meth:`ServerSession.receive` (events come back), send with
:meth:`reply`, :meth:`data` and :meth:`reset`, and write :meth:`data_to_send` to the socket.
"""

from __future__ import annotations

import dataclasses
import zlib

VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = 1, 2, 3, 4, 6, 7, 8, 9
FLAG_FIN = 0x01
RST_PROTOCOL_ERROR, RST_REFUSED_STREAM, RST_INTERNAL_ERROR, RST_CANCEL = 1, 3, 6, 5
DATA_CHUNK = 32 * 1024  # the most sent in one DATA frame (the protocol allows 16 MiB)

# The SPDY/3 header-compression dictionary (draft-mbelshe-httpbis-spdy-00, 2.6.10.1): these
# words, each after its length as 4 bytes big-endian, then the status lines, dates and media
# types below, as they are.
_DICTIONARY_WORDS = (
    *(
        "options head post put delete trace accept accept-charset accept-encoding accept-language"
        " accept-ranges age allow authorization cache-control connection content-base content-encoding"
        " content-language content-length content-location content-md5 content-range content-type date"
        " etag expect expires from host if-match if-modified-since if-none-match if-range"
        " if-unmodified-since last-modified location max-forwards pragma proxy-authenticate"
        " proxy-authorization range referer retry-after server te trailer transfer-encoding upgrade"
        " user-agent vary via warning www-authenticate method get status"
    ).split(),
    "200 OK",
    "version",
    "HTTP/1.1",
    *"url public set-cookie keep-alive origin".split(),
)
_DICTIONARY_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00"
    " Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,"
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)


def _dictionary() -> bytes:
    words = b"".join(len(w).to_bytes(4, "big") + w.encode() for w in _DICTIONARY_WORDS)
    return words + _DICTIONARY_TAIL.encode()


HEADER_DICTIONARY = _dictionary()


class ProtocolError(Exception):
    """The peer sent something that is not SPDY/3.1: the session cannot go on."""


@dataclasses.dataclass(frozen=True)
class StreamOpened:
    stream_id: int
    headers: dict[str, str]
    fin: bool  # the client will send nothing on it


@dataclasses.dataclass(frozen=True)
class StreamData:
    stream_id: int
    data: bytes
    fin: bool  # the client is done sending on it


@dataclasses.dataclass(frozen=True)
class StreamReset:
    stream_id: int
    status: int


@dataclasses.dataclass(frozen=True)
class SessionClosed:
    """GOAWAY: the client opens no more streams (those open may finish)."""


Event = StreamOpened | StreamData | StreamReset | SessionClosed


def _control(frame_type: int, flags: int, payload: bytes) -> bytes:
    return (
        (0x8000 | VERSION).to_bytes(2, "big")
        + frame_type.to_bytes(2, "big")
        + bytes([flags])
        + len(payload).to_bytes(3, "big")
        + payload
    )


def _data(stream_id: int, flags: int, payload: bytes) -> bytes:
    return (stream_id & 0x7FFFFFFF).to_bytes(4, "big") + bytes([flags]) + len(payload).to_bytes(3, "big") + payload


class ServerSession:
    """One SPDY/3.1 session as its server: streams are opened by the client (odd ids)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._out = bytearray()
        self._inflate = zlib.decompressobj(zdict=HEADER_DICTIONARY)
        self._deflate = zlib.compressobj(zdict=HEADER_DICTIONARY)

    # ------------------------------------------------------------------ reading

    def receive(self, data: bytes) -> list[Event]:
        """Parse what arrived; a frame cut short waits for the rest."""
        self._buffer += data
        events: list[Event] = []
        while len(self._buffer) >= 8:
            length = int.from_bytes(self._buffer[5:8], "big")
            if len(self._buffer) < 8 + length:
                break
            head, payload = bytes(self._buffer[:8]), bytes(self._buffer[8 : 8 + length])
            del self._buffer[: 8 + length]
            flags = head[4]
            if head[0] & 0x80:
                events += self._control_frame(head, flags, payload)
            else:
                stream_id = int.from_bytes(head[:4], "big")
                events.append(StreamData(stream_id, payload, bool(flags & FLAG_FIN)))
        return events

    def _control_frame(self, head: bytes, flags: int, payload: bytes) -> list[Event]:
        version, frame_type = int.from_bytes(head[:2], "big") & 0x7FFF, int.from_bytes(head[2:4], "big")
        if version != VERSION:
            raise ProtocolError(f"SPDY version {version} (this side speaks {VERSION})")
        if frame_type == SYN_STREAM:
            stream_id = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            return [StreamOpened(stream_id, self._headers(payload[10:]), bool(flags & FLAG_FIN))]
        if frame_type == HEADERS:  # nothing in port-forward needs them, but they advance the zlib stream
            self._headers(payload[4:])
        elif frame_type == RST_STREAM:
            return [StreamReset(int.from_bytes(payload[:4], "big") & 0x7FFFFFFF, int.from_bytes(payload[4:8], "big"))]
        elif frame_type == PING:
            self._out += _control(PING, 0, payload)  # answered as it came: the client counts the round trip
        elif frame_type == GOAWAY:
            return [SessionClosed()]
        elif frame_type == SYN_REPLY:
            raise ProtocolError("SYN_REPLY to a server that opens no streams")
        return []  # SETTINGS, WINDOW_UPDATE: no flow control on either side (see the module docstring)

    def _headers(self, block: bytes) -> dict[str, str]:
        try:
            raw = self._inflate.decompress(block)
        except zlib.error as exc:
            raise ProtocolError(f"header block: {exc}") from exc
        count, pos, headers = int.from_bytes(raw[:4], "big"), 4, {}
        for _ in range(count):
            fields = []
            for _ in range(2):
                size = int.from_bytes(raw[pos : pos + 4], "big")
                fields.append(raw[pos + 4 : pos + 4 + size].decode("latin-1"))
                pos += 4 + size
            headers[fields[0].lower()] = fields[1].replace("\x00", ",")  # NUL separates a header's values
        return headers

    # ------------------------------------------------------------------ writing

    def reply(self, stream_id: int, fin: bool = False) -> None:
        """SYN_REPLY, no headers: the stream is accepted (the client waits for this)."""
        block = self._deflate.compress((0).to_bytes(4, "big")) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
        self._out += _control(SYN_REPLY, FLAG_FIN if fin else 0, stream_id.to_bytes(4, "big") + block)

    def data(self, stream_id: int, data: bytes, fin: bool = False) -> None:
        """DATA frames carrying ``data``; ``fin``: this side sends nothing more on the stream."""
        view = memoryview(data)
        for i in range(0, len(view), DATA_CHUNK):
            last = i + DATA_CHUNK >= len(view)
            self._out += _data(stream_id, FLAG_FIN if fin and last else 0, bytes(view[i : i + DATA_CHUNK]))
        if not view and fin:
            self._out += _data(stream_id, FLAG_FIN, b"")

    def reset(self, stream_id: int, status: int = RST_CANCEL) -> None:
        self._out += _control(RST_STREAM, 0, stream_id.to_bytes(4, "big") + status.to_bytes(4, "big"))

    def go_away(self, last_stream_id: int = 0) -> None:
        self._out += _control(GOAWAY, 0, last_stream_id.to_bytes(4, "big") + (0).to_bytes(4, "big"))

    def data_to_send(self) -> bytes:
        out, self._out = bytes(self._out), bytearray()
        return out
