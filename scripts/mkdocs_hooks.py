"""MkDocs hook: a line ``<!-- asyncapi: examples/NAME.toml -->`` in a page becomes the
AsyncAPI document of that service, generated at build time (so the docs show what the code
generates today, never a stale copy)."""

from __future__ import annotations

import re
from typing import Any

_MARKER = re.compile(r"^<!-- asyncapi: (\S+\.toml) -->$", re.MULTILINE)


def on_page_markdown(markdown: str, **_: Any) -> str:
    if "<!-- asyncapi:" not in markdown:
        return markdown
    from bridge import asyncapi_document, dump_asyncapi, load_config
    from eventbus import EventBus

    def document(match: re.Match[str]) -> str:
        config = load_config(match.group(1), env={})
        text = dump_asyncapi(asyncapi_document(config, EventBus(), version="0.1.0"), "yaml")
        return f"```yaml\n{text}```"

    return _MARKER.sub(document, markdown)
