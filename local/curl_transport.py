"""An azure-core HTTP transport on libcurl (pycurl), for the local stack's storage clients.

azure-core's default transport sends each request through requests, urllib3 and
``http.client``: request building, connection-pool bookkeeping and header parsing (with
the ``email`` package) in Python. Against Azurite on loopback that is about half of the
Python CPU of a storage call (``make bench``, section ``storage_calls``), and the local
stack makes about twenty of them per rotation on the same cores as everything else.
libcurl does the same work in C and gives the interpreter back while it waits.

The transport is for loopback only: no proxy (environment variables ignored), no TLS
settings, no redirects. Each thread keeps one curl handle (and so one kept-alive
connection per host), as each thread of the requests transport takes one from its pool.
Bodies are read whole, also when the SDK asks to stream: the local stack's largest body
is a CRL. In Azure the functions use the SDK's default transport.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator, MutableMapping
from typing import Any

import pycurl
from azure.core.exceptions import ServiceRequestError, ServiceResponseError
from azure.core.pipeline.transport import HttpTransport
from azure.core.rest._http_response_impl import HttpResponseImpl
from azure.core.utils import case_insensitive_dict

#: curl error codes meaning the request never reached the server (safe to retry)
_NOT_SENT = {pycurl.E_COULDNT_RESOLVE_HOST, pycurl.E_COULDNT_CONNECT}


class _Body:
    """What ``stream_download`` returns: the (already read) body in one chunk."""

    def __init__(self, pipeline: Any, response: CurlResponse, **_kwargs: Any) -> None:
        self.pipeline = pipeline
        self.request = response.request
        self.response = response
        self.content_length = len(response.content)
        self._chunks = iter((response.content,) if response.content else ())

    def __len__(self) -> int:
        return self.content_length

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        return next(self._chunks)


class CurlResponse(HttpResponseImpl):  # type: ignore[misc]
    """A response whose body has been read; the SDK's rest response in every other way."""

    def __init__(
        self,
        *,
        request: Any,
        status_code: int,
        reason: str,
        headers: MutableMapping[str, str],
        content: bytes,
    ) -> None:
        super().__init__(
            request=request,
            internal_response=None,
            status_code=status_code,
            reason=reason,
            headers=headers,
            content_type=headers.get("content-type"),
            stream_download_generator=_Body,
        )
        self._content = content

    def close(self) -> None:  # nothing to give back: curl has read the whole body
        self._is_closed = True

    def body(self) -> bytes:  # the pre-rest response API some SDK paths still call
        return self.content  # type: ignore[no-any-return]


def _parse_head(raw: list[bytes]) -> tuple[str, MutableMapping[str, str]]:
    """The reason phrase and headers of the last response head curl saw."""
    text = b"".join(raw).decode("iso-8859-1")
    head = text.rstrip("\r\n").rsplit("\r\n\r\n", 1)[-1].split("\r\n")
    parts = head[0].split(" ", 2)
    headers: MutableMapping[str, str] = case_insensitive_dict()
    for line in head[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip()] = value.strip()
    return (parts[2] if len(parts) > 2 else ""), headers


class CurlTransport(HttpTransport):  # type: ignore[misc]
    """azure-core ``HttpTransport`` over one libcurl handle per thread."""

    def __init__(self, *, connection_timeout: float = 30.0, read_timeout: float = 300.0) -> None:
        self._local = threading.local()
        self._connection_timeout = connection_timeout
        self._read_timeout = read_timeout

    def __enter__(self) -> CurlTransport:
        return self

    def __exit__(self, *_exc: Any) -> None:
        return None

    def open(self) -> None:
        return None

    def close(self) -> None:
        curl = getattr(self._local, "curl", None)
        if curl is not None:
            curl.close()
            self._local.curl = None

    def _curl(self) -> Any:
        curl = getattr(self._local, "curl", None)
        if curl is None:
            curl = pycurl.Curl()
            curl.setopt(pycurl.NOSIGNAL, 1)
            curl.setopt(pycurl.PROXY, "")  # loopback: ignore http_proxy and friends
            curl.setopt(pycurl.FOLLOWLOCATION, 0)
            self._local.curl = curl
        return curl

    def send(self, request: Any, **kwargs: Any) -> CurlResponse:
        if request.files:
            raise ValueError("the curl transport sends no multipart/form-data file uploads")
        body = request.data
        if isinstance(body, str):
            body = body.encode("utf-8")
        elif body is not None and not isinstance(body, bytes):
            body = body.read() if hasattr(body, "read") else b"".join(body)
        method = request.method.upper()
        curl = self._curl()
        curl.setopt(pycurl.URL, request.url)
        curl.setopt(pycurl.NOBODY, method == "HEAD")
        if method != "HEAD":
            if body is None and method in ("GET", "DELETE"):
                curl.setopt(pycurl.HTTPGET, 1)
            else:
                curl.setopt(pycurl.POSTFIELDS, body or b"")
        curl.setopt(pycurl.CUSTOMREQUEST, method)
        sent = {name.lower() for name in request.headers}
        header_lines = [f"{name}: {value}" for name, value in request.headers.items()]
        # curl adds these unless told not to; Shared Key signatures cover Content-Type
        header_lines.append("Expect:")
        header_lines += [f"{h}:" for h in ("Content-Type", "Accept") if h.lower() not in sent]
        curl.setopt(pycurl.HTTPHEADER, header_lines)
        connect = kwargs.get("connection_timeout", self._connection_timeout)
        read = kwargs.get("read_timeout", self._read_timeout)
        curl.setopt(pycurl.CONNECTTIMEOUT_MS, int(1000 * connect))
        curl.setopt(pycurl.TIMEOUT_MS, int(1000 * (connect + read)))
        out = io.BytesIO()
        head: list[bytes] = []
        curl.setopt(pycurl.WRITEDATA, out)
        curl.setopt(pycurl.HEADERFUNCTION, head.append)
        try:
            curl.perform()
        except pycurl.error as exc:
            code = exc.args[0] if exc.args else None
            error = ServiceRequestError if code in _NOT_SENT else ServiceResponseError
            raise error(f"{method} {request.url}: {exc}", error=exc) from exc
        reason, headers = _parse_head(head)
        return CurlResponse(
            request=request,
            status_code=curl.getinfo(pycurl.RESPONSE_CODE),
            reason=reason,
            headers=headers,
            content=out.getvalue(),
        )
