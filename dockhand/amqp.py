"""Broker URLs, shared by the worker, the client and the CLI.

Contract v1.1: ``DOCKHAND_AMQP_URL`` (and every client of the project) takes a comma-separated
list of URLs, the nodes of one RabbitMQ cluster. The short form ``amqp://u:p@h1:5701,h2:5702/vh``
(several ``host:port`` in one URL, as other AMQP clients write it) is accepted too and expanded
to one URL per node, so that no caller ever hands aio-pika a string it cannot parse.
"""

from __future__ import annotations

import os
import re
from urllib.parse import unquote, urlsplit

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


class UrlError(ValueError):
    """A broker URL list that does not parse."""


def split_urls(value: str) -> list[str]:
    """The node URLs in ``value``: ``"amqp://a/,amqp://b/"`` or ``"amqp://u:p@a:1,b:2/vh"``."""
    parts = [part.strip() for part in value.split(",")]
    if not any(parts):
        raise UrlError("no broker URL given")
    urls: list[str] = []
    short = False
    for part in parts:
        if not part:
            raise UrlError(f"empty entry in the broker URL list {mask_url(value)!r}")
        if _SCHEME.match(part):
            urls.append(part)
        elif urls:  # "h2:5702/vh" after "amqp://u:p@h1:5701": another node of the same URL
            urls.append(_sibling(urls[-1], part))
            short = True
        else:
            raise UrlError(f"{mask_url(part)!r} is not an amqp:// or amqps:// URL")
    for url in urls:
        scheme = urlsplit(url).scheme.lower()
        if scheme not in {"amqp", "amqps"}:
            raise UrlError(f"{mask_url(url)!r}: the scheme must be amqp:// or amqps://, not {scheme}://")
        try:
            urlsplit(url).port  # noqa: B018 -- parses the port, raising ValueError when it is not a number
        except ValueError as err:
            raise UrlError(f"{mask_url(url)!r}: {err}") from err
    if short:  # the short form names the vhost (and query) once, after the last node: all share it
        tail = _tail(urls[-1])
        urls = [url if _tail(url) else url + tail for url in urls]
    return urls


def _tail(url: str) -> str:
    """The path and query of ``url`` ("/vhost?x=1"), or "" when it has none."""
    rest = _SCHEME.sub("", url, count=1)
    index = rest.find("/")
    return rest[index:] if index >= 0 else ""


def _sibling(url: str, node: str) -> str:
    """``node`` ("h2:5702/vh") as a URL with the scheme and credentials of ``url``."""
    scheme, rest = url.split("://", 1)
    netloc = rest.split("/", 1)[0]
    credentials = netloc.rsplit("@", 1)[0] + "@" if "@" in netloc else ""
    return f"{scheme}://{credentials}{node}"


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and logs); each of a list."""
    return ",".join(
        re.sub(r"^(\s*[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@]*:)[^@/]*@", r"\1***@", part) for part in url.split(",")
    )


def url_user(url: str) -> str | None:
    """The user name in an AMQP URL (the first of a list), or ``None`` if it names none."""
    user = urlsplit(url.split(",", 1)[0].strip()).username
    return unquote(user) if user else None


def error_reason(err: BaseException) -> str:
    """The readable part of a broker connection error (for one-line messages): ``Connection
    refused``, not the errno tuple; the broker's own words for ``ACCESS_REFUSED``; passwords masked."""
    cause = err.__cause__ if isinstance(err.__cause__, OSError) else err
    errno = getattr(cause, "errno", None)
    if isinstance(errno, int) and errno > 0:
        return os.strerror(errno)
    if isinstance(cause, TimeoutError):
        return "no answer in time"
    args = [a for a in getattr(cause, "args", ()) if isinstance(a, str)]
    text = args[-1] if args else str(cause) or type(cause).__name__
    return mask_url(text.split(" - ", 1)[-1] if text.startswith("ACCESS_REFUSED") else text)
