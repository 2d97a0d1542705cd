"""Image references a wire format cannot send as they are: fetched by the router, sent as bytes.

Bedrock Converse takes image bytes only, and Gemini takes a URL only when the image's type
shows in it. LiteLLM fetches such URLs itself and sends the bytes; so does the router, within
the attempt's timeouts: at most `MAX_IMAGE_BYTES`, only `image/*` answers (or a URL whose
extension names an image type), at most `_REDIRECTS` redirects, and — because the URL comes
from the caller and the router sits inside the network (SSRF) — never from a private,
loopback, link-local or otherwise non-public address unless the operator allows it
(`STEPLINE_IMAGE_FETCH_PRIVATE`). A URL that cannot be fetched fails the call as a bad
request naming the URL without its query (signed URLs carry credentials there).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
from collections.abc import Callable
from dataclasses import replace
from urllib.parse import urljoin, urlsplit

import httpx

from stepline_router.errors import Outcome, ProviderError
from stepline_router.providers.base import AttemptLimits
from stepline_router.providers.http import httpx_timeout
from stepline_router.types import ModelRequest
from stepline_vocab import split_data_uri

__all__ = ["MAX_IMAGE_BYTES", "fetch_image", "inline_images", "url_media_type"]

# Gemini's limit for a whole inline request; Bedrock refuses a larger image itself.
MAX_IMAGE_BYTES = 20 * 1024 * 1024
_REDIRECTS = 3
# Image types by the extension of a URL's path.
_EXTENSIONS = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
    "heic": "image/heic",
    "heif": "image/heif",
}


def url_media_type(url: str) -> str | None:
    """The image type an http(s) URL's path names by its extension (`.png` → image/png)."""
    path = urlsplit(url).path
    _, dot, extension = path.rpartition(".")
    return _EXTENSIONS.get(extension.lower()) if dot else None


def _shown(url: str) -> str:
    """The URL fit for an error: scheme, host and path, never the query."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _refused(url: str, why: str) -> ProviderError:
    return ProviderError(Outcome.BAD_REQUEST, f"image {_shown(url)} could not be fetched: {why}")


async def _public(host: str, port: int) -> bool:
    """Whether every address `host` resolves to is a public one."""
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return False
    addresses = {ipaddress.ip_address(info[4][0]) for info in found}
    return bool(addresses) and all(address.is_global for address in addresses)


async def fetch_image(
    client: httpx.AsyncClient, url: str, limits: AttemptLimits, *, allow_private: bool
) -> str:
    """The image at `url` as a data URI; BAD_REQUEST when it cannot be had (see the module)."""
    try:
        async with asyncio.timeout(limits.total_s):
            for _ in range(_REDIRECTS + 1):
                parts = urlsplit(url)
                if parts.scheme not in ("http", "https") or not parts.hostname:
                    raise _refused(url, "not an http(s) URL")
                port = parts.port or (443 if parts.scheme == "https" else 80)
                if not allow_private and not await _public(parts.hostname, port):
                    raise _refused(url, "its host is not a public address")
                async with client.stream(
                    "GET", url, timeout=httpx_timeout(limits), follow_redirects=False
                ) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if not response.is_success:
                        raise _refused(url, f"HTTP {response.status_code}")
                    media = response.headers.get("content-type", "").split(";")[0].strip()
                    if not media.lower().startswith("image/"):
                        media = url_media_type(url) or ""
                    if not media:
                        raise _refused(url, "the answer is not an image")
                    data = bytearray()
                    async for chunk in response.aiter_bytes():
                        data += chunk
                        if len(data) > MAX_IMAGE_BYTES:
                            raise _refused(url, f"larger than {MAX_IMAGE_BYTES} bytes")
                return f"data:{media.lower()};base64,{base64.b64encode(data).decode()}"
    except TimeoutError as error:
        raise _refused(url, f"no answer within {limits.total_s:.1f}s") from error
    except httpx.HTTPError as error:
        raise _refused(url, type(error).__name__) from error
    raise _refused(url, f"more than {_REDIRECTS} redirects")


async def inline_images(
    client: httpx.AsyncClient,
    request: ModelRequest,
    limits: AttemptLimits,
    needs_bytes: Callable[[str], bool],
    *,
    allow_private: bool,
) -> ModelRequest:
    """`request` with every image `needs_bytes` picks fetched into a data URI (each URL once)."""
    fetched: dict[str, str] = {}
    messages = list(request.messages)
    for place, message in enumerate(messages):
        if not any(needs_bytes(ref) for ref in message.images):
            continue
        images: list[str] = []
        for ref in message.images:
            if needs_bytes(ref) and split_data_uri(ref) is None:
                if ref not in fetched:
                    fetched[ref] = await fetch_image(
                        client, ref, limits, allow_private=allow_private
                    )
                ref = fetched[ref]
            images.append(ref)
        messages[place] = replace(message, images=tuple(images))
    return replace(request, messages=tuple(messages)) if fetched else request
