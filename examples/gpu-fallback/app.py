"""A fal.App that prefers H100 and falls back to H200.

``machine_type`` is an ordered list: the scheduler places a runner on an H100 node when one has
a free GPU and on an H200 node otherwise. The app computes a softmax in pure Python, so it
runs without a GPU, and reports the GPUs the NVIDIA runtime exposed to it (none in CI).
"""

from __future__ import annotations

import math
import os

import fal
import pydantic


class SoftmaxInput(pydantic.BaseModel):
    logits: list[float] = pydantic.Field(min_length=1, max_length=4096)


class SoftmaxOutput(pydantic.BaseModel):
    probabilities: list[float]
    visible_devices: str


class FallbackSoftmax(fal.App, name="gpu-fallback"):  # type: ignore[no-untyped-call]
    machine_type = ["GPU-H100", "GPU-H200"]
    min_concurrency = 0
    max_concurrency = 3
    concurrency_buffer = 1
    scaling_delay = 5
    skip_retry_conditions = ["timeout"]

    @fal.endpoint("/")
    def softmax(self, request: SoftmaxInput) -> SoftmaxOutput:
        peak = max(request.logits)
        exponentials = [math.exp(logit - peak) for logit in request.logits]
        total = sum(exponentials)
        return SoftmaxOutput(
            probabilities=[value / total for value in exponentials],
            visible_devices=os.environ.get("NVIDIA_VISIBLE_DEVICES", ""),
        )
