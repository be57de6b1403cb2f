"""Where an OpenAI content part's media comes from: a data: URL, a file under the media root, or an
allowed remote host.

- `data:<mime>;base64,<data>`: decoded here (its size checked before and after decoding).
- `file:///abs/path` or a relative path: sent as `media_path`, relative to the server's media root
  (refused when the server has none; a path that leaves the root is refused here and, links
  included, again by the server).
- `http(s)://host/…`: refused unless `allowed_hosts` names the host (no server-side request
  forgery); then fetched with httpx, without following redirects, within `fetch_timeout` seconds
  and `max_bytes`.
"""
from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional
from urllib.parse import unquote, urlsplit

from videoneva.schema import RequestError
from videoneva.serving.openai_schema import MediaRef


class TooLarge(RequestError):
    """A body or media item over the server's size limit (HTTP 413)."""


@dataclass
class MediaPolicy:
    """Where media may come from and how much of it.

    Attributes:
        media_root: the server's media root (None: paths are refused).
        allowed_hosts: remote hosts media may be fetched from ("host" or "host:port", lower case).
        max_bytes: the largest media item (the server's max_media_bytes).
        fetch_timeout: seconds for a whole remote fetch.
    """

    media_root: Optional[Path] = None
    allowed_hosts: frozenset = field(default_factory=frozenset)
    max_bytes: int = 64 * 2**20
    fetch_timeout: float = 10.0

    def __post_init__(self) -> None:
        self.media_root = Path(self.media_root).resolve() if self.media_root else None
        self.allowed_hosts = frozenset(h.strip().lower() for h in self.allowed_hosts if h.strip())


def _too_large(ref: MediaRef, size: int, limit: int) -> TooLarge:
    return TooLarge(f"{ref.where}: the {ref.media_type} is {size} bytes; this server takes at most {limit} "
                    "(max_media_bytes)")


def decode_data_url(ref: MediaRef, max_bytes: int) -> bytes:
    head, sep, payload = ref.url.partition(",")
    if not sep or not head.endswith(";base64"):
        raise RequestError(f"{ref.where}: a data URL must be data:<mime>;base64,<data>")
    bound = len(payload) * 3 // 4  # the decoded size, less padding
    if bound - 2 > max_bytes:
        raise _too_large(ref, bound, max_bytes)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(f"{ref.where}: the data URL is not valid base64 ({exc})") from None
    if len(data) > max_bytes:
        raise _too_large(ref, len(data), max_bytes)
    if not data:
        raise RequestError(f"{ref.where}: the data URL holds no data")
    return data


def media_path(ref: MediaRef, root: Optional[Path]) -> str:
    """The path of a file:// URL or a relative path, relative to the media root."""
    if root is None:
        raise RequestError(f"{ref.where}: {ref.url[:120]!r} is a path, but this server has no media root (start it "
                           "with media_root=DIR); send the media as a data: URL")
    parts = urlsplit(ref.url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise RequestError(f"{ref.where}: file URLs name no host, got {parts.netloc!r}")
        path = Path(unquote(parts.path))
    else:
        path = root / unquote(ref.url)
    # normpath, not resolve: a link inside the root is the server's to judge (it refuses links out)
    full = Path(os.path.normpath(path if path.is_absolute() else root / path))
    if full != root and root not in full.parents:
        raise RequestError(f"{ref.where}: {ref.url[:120]!r} is outside the server's media root")
    return full.relative_to(root).as_posix()


async def fetch(ref: MediaRef, policy: MediaPolicy, http) -> bytes:
    """GET an allowed remote URL with the policy's limits (http: an httpx.AsyncClient)."""
    import httpx

    parts = urlsplit(ref.url)
    host = (parts.hostname or "").lower()
    if not ({host, parts.netloc.lower()} & policy.allowed_hosts):
        raise RequestError(f"{ref.where}: remote media from {host or ref.url[:80]!r} is not allowed; this server "
                           "fetches only from the hosts openai_allowed_hosts names; send the media as a data: URL")
    try:
        async with http.stream("GET", ref.url, timeout=policy.fetch_timeout, follow_redirects=False) as r:
            if r.status_code != 200:
                raise RequestError(f"{ref.where}: fetching {ref.url[:120]} gave HTTP {r.status_code}")
            declared = int(r.headers.get("content-length") or 0)
            if declared > policy.max_bytes:
                raise _too_large(ref, declared, policy.max_bytes)
            data = bytearray()
            async for piece in r.aiter_bytes():
                data += piece
                if len(data) > policy.max_bytes:
                    raise _too_large(ref, len(data), policy.max_bytes)
            return bytes(data)
    except httpx.TimeoutException:
        raise RequestError(f"{ref.where}: fetching {ref.url[:120]} took over {policy.fetch_timeout:g} s") from None
    except httpx.HTTPError as exc:
        raise RequestError(f"{ref.where}: fetching {ref.url[:120]} failed: {exc}") from None


async def resolve(ref: MediaRef, policy: MediaPolicy, http) -> dict:
    """Client.answer keyword arguments for the media: media_type and media_bytes or media_path."""
    scheme = urlsplit(ref.url).scheme.lower()
    if scheme == "data":
        return {"media_type": ref.media_type, "media_bytes": decode_data_url(ref, policy.max_bytes)}
    if scheme in ("http", "https"):
        return {"media_type": ref.media_type, "media_bytes": await fetch(ref, policy, http)}
    if scheme in ("", "file"):
        return {"media_type": ref.media_type, "media_path": media_path(ref, policy.media_root)}
    raise RequestError(f"{ref.where}: URL scheme {scheme!r} is not supported; use data:, file:, a path under the "
                       "media root, or an allowed http(s) host")
