"""Network misbehaviour between the gateway and the fake exchange: a TCP proxy that pipes,
terminates TLS with a self-signed certificate, or swallows connections (a listening socket
that never completes the handshake)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """A fresh self-signed certificate for 127.0.0.1 (``openssl`` CLI): (cert, key)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        if os.environ.get("CI") == "true":
            pytest.fail("openssl not found on PATH; CI=true requires it")
        pytest.skip("openssl not found on PATH")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


class Proxy:
    """A loopback TCP proxy to ``target`` (host, port).

    ``mode``: ``pipe`` forwards both ways; ``blackhole`` accepts and reads but never
    answers (a connect that never completes the WebSocket handshake).  With ``tls`` (an
    SSLContext) it terminates TLS first (``accepted`` then counts completed TLS
    handshakes).  ``cut()`` drops every open connection."""

    def __init__(self, target: tuple[str, int], tls: ssl.SSLContext | None = None) -> None:
        self.target = target
        self.tls = tls
        self.mode = "pipe"
        self.accepted = 0
        self.piped = 0  # connections forwarded to the target
        self.swallowed = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    def cut(self) -> None:
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        try:
            if self.mode == "blackhole":
                self.swallowed += 1
                while await reader.read(65536):
                    pass
                return
            up_r, up_w = await asyncio.open_connection(*self.target)
            self._writers.add(up_w)
            self.piped += 1
            await asyncio.gather(_pump(reader, up_w), _pump(up_r, writer))
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer,):
                w.transport.abort()
                self._writers.discard(w)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, ssl.SSLError):
        pass
    finally:
        writer.transport.abort()
