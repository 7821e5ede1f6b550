"""A CPU-only fal.App: word statistics of a text.

The smallest useful kubefal app: machine type ``M``, scales to zero, two requests per runner.
Serve it locally with ``kubefal run examples/text-stats/app.py::TextStats`` and deploy it
with ``kubectl apply -f examples/text-stats/falapp.yaml``.
"""

from __future__ import annotations

import collections
import re

import fal
import pydantic


class TextInput(pydantic.BaseModel):
    text: str = pydantic.Field(description="Text to analyse", max_length=100_000)
    top: int = pydantic.Field(default=3, ge=1, le=50, description="How many top words")


class TextStatsOutput(pydantic.BaseModel):
    words: int
    distinct_words: int
    top_words: list[tuple[str, int]]


class TextStats(fal.App, name="text-stats"):  # type: ignore[no-untyped-call]
    machine_type = "M"
    min_concurrency = 0
    max_concurrency = 4
    keep_alive = 120
    max_multiplexing = 2
    request_timeout = 60
    app_auth = "private"

    @fal.endpoint("/")
    def analyse(self, request: TextInput) -> TextStatsOutput:
        words = re.findall(r"[a-z']+", request.text.lower())
        counts = collections.Counter(words)
        return TextStatsOutput(
            words=len(words),
            distinct_words=len(counts),
            top_words=counts.most_common(request.top),
        )
