"""The dashboard's gate: a random token on every request, and a Host header check against DNS rebinding.

As Jupyter does: the address printed at start carries `?token=...`; the first request with
it gets the token back in a cookie (HttpOnly, SameSite=Strict) and is redirected to the
same address without it, so the token leaves the address bar. Every later request must
carry the cookie. A page served under another host name (a rebinding attacker's domain that
resolves to 127.0.0.1) is refused before the token is even looked at.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections.abc import Iterable
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode

from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def new_token() -> str:
    """A random token: 192 bits, URL-safe."""
    return secrets.token_urlsafe(24)


def host_name(header: str) -> str:
    """The name in a Host header, without its port: "[::1]:8765" -> "::1", "Localhost:1" -> "localhost"."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class Gate:
    """ASGI middleware: refuse a wrong Host (403), trade `?token=` for a cookie (303), then require the cookie (403)."""

    def __init__(self, app: ASGIApp, *, token: str, host: str = "127.0.0.1", allowed: Iterable[str] = ()) -> None:
        self.app, self.token = app, token
        self.bind = host.strip("[]").lower()
        self.allowed = {*LOOPBACK_NAMES, *(a.lower() for a in allowed)}
        if self.bind not in WILDCARD_HOSTS:
            self.allowed.add(self.bind)

    def host_allowed(self, name: str) -> bool:
        # bound to every interface: any address literal is this machine; names stay refused
        return name in self.allowed or (self.bind in WILDCARD_HOSTS and is_ip(name))

    def cookie_name(self, scope: Scope) -> str:
        port = (scope.get("server") or ("", 0))[1]
        return f"mindscope-token-{port}"  # one per port: cookies ignore ports, dashboards must not share one

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # the dashboard has none
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        name = host_name(headers.get("host", ""))
        if not self.host_allowed(name):
            await _refuse(
                send,
                403,
                f"host {name or '(none)'!r} is not allowed: open the dashboard at the address "
                "'mindscope serve' printed (a guard against DNS rebinding)",
            )
            return
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given = [v for k, v in query if k == "token"]
        cookie_name = self.cookie_name(scope)
        if given and hmac.compare_digest(given[-1].encode(), self.token.encode()):
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            location = scope.get("root_path", "") + scope["path"] + (f"?{rest}" if rest else "")
            cookie = f"{cookie_name}={self.token}; Path=/; HttpOnly; SameSite=Strict"
            headers = [(b"location", location.encode()), (b"set-cookie", cookie.encode()), (b"content-length", b"0")]
            await _respond(send, 303, b"", headers)
            return
        jar = SimpleCookie()
        try:
            jar.load(headers.get("cookie", ""))
        except Exception:  # a malformed Cookie header is no token
            jar = SimpleCookie()
        held = jar.get(cookie_name)
        if held is None or not hmac.compare_digest(held.value.encode(), self.token.encode()):
            await _refuse(
                send,
                403,
                "missing or wrong token: open the address that 'mindscope serve' printed (it ends in ?token=...)",
            )
            return
        await self.app(scope, receive, send)


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _refuse(send: Send, status: int, message: str) -> None:
    body = (message + "\n").encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await _respond(send, status, body, headers)
