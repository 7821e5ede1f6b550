"""A fal.App that sets every attribute `kubefal deploy` maps, for the rendering tests."""

import fal
import pydantic


class Prompt(pydantic.BaseModel):
    prompt: str


class GpuImageApp(fal.App, name="gpu-image", keep_alive=900):  # type: ignore[no-untyped-call]
    machine_type = ["GPU-H100", "GPU-A100"]
    num_gpus = 2
    regions = ["us-east", "eu-west"]
    app_auth = "public"
    requirements = ["torch==2.5.1", "diffusers>=0.30"]
    min_concurrency = 1
    max_concurrency = 6
    concurrency_buffer = 1
    concurrency_buffer_perc = 20
    scaling_delay = 5
    max_multiplexing = 3
    kubefal_persistent_data = True  # the namespace's /data (FalApp persistentData)
    kubefal_scaling_policy = "countStarting"  # FalApp scaling.policy
    request_timeout = 900
    startup_timeout = 1200
    skip_retry_conditions = ["timeout"]

    @fal.endpoint("/")
    def generate(self, prompt: Prompt) -> dict[str, str]:
        return {"image": prompt.prompt}

    @fal.endpoint(
        "/healthy",
        health_check=fal.HealthCheck(
            start_period_seconds=45, timeout_seconds=7, failure_threshold=4, call_regularly=True
        ),
    )
    def healthy(self) -> dict[str, bool]:
        return {"ok": True}
