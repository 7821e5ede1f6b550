"""A fal.App that asks for two H100 GPUs per runner.

It stands for a model sharded over two GPUs (tensor parallelism). It computes nothing on a
GPU, so it runs anywhere (CI has none): it reports which GPUs the device plugin handed the
container and does a small pure-Python matrix product per "shard". On a cluster, each runner
pod gets ``nvidia.com/gpu: 2`` and lands on an ``NVIDIA-H100-80GB-HBM3`` node.
"""

from __future__ import annotations

import os

import fal
import pydantic

SHARDS = 2


class MatmulInput(pydantic.BaseModel):
    size: int = pydantic.Field(default=8, ge=1, le=64, description="Square matrix size")


class MatmulOutput(pydantic.BaseModel):
    trace: float
    shards: int
    visible_devices: str


def _matmul_trace(size: int, seed: int) -> float:
    """Trace of A @ B for deterministic matrices A and B."""
    a = [[float((row * size + col + seed) % 7) for col in range(size)] for row in range(size)]
    b = [[float((row + 2 * col + seed) % 5) for col in range(size)] for row in range(size)]
    return sum(sum(a[i][k] * b[k][i] for k in range(size)) for i in range(size))


class ShardedMatmul(fal.App, name="h100-pair"):  # type: ignore[no-untyped-call]
    machine_type = "GPU-H100"
    num_gpus = SHARDS
    min_concurrency = 1
    max_concurrency = 2
    keep_alive = 300
    startup_timeout = 900
    request_timeout = 600

    def setup(self) -> None:
        self.visible_devices = os.environ.get("NVIDIA_VISIBLE_DEVICES", "")

    @fal.endpoint("/")
    def multiply(self, request: MatmulInput) -> MatmulOutput:
        trace = sum(_matmul_trace(request.size, seed=shard) for shard in range(SHARDS))
        return MatmulOutput(trace=trace, shards=SHARDS, visible_devices=self.visible_devices)
