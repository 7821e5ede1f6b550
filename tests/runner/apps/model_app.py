# mypy: disable-error-code="no-untyped-call"
# (fal.App.__init_subclass__ is untyped; the app itself stays as a user would write it.)
"""A model app: setup() fits a scikit-learn regression on numpy data; a custom health check.

The health check answers 200 while the model predicts what it learned, and fails (500) once the
file named by ``KUBEFAL_TEST_UNHEALTHY_FILE`` exists, so a test can flip it.
"""

from __future__ import annotations

import os
import pathlib

import fal
import numpy
from pydantic import BaseModel
from sklearn.linear_model import LinearRegression


class PredictInput(BaseModel):
    x: list[float]


class PredictOutput(BaseModel):
    y: list[float]


class ModelApp(fal.App, keep_alive=120, name="linear-model"):
    machine_type = ["GPU-A100", "GPU-H100"]
    num_gpus = 1
    regions = ["eu-west"]
    app_auth = "private"
    min_concurrency = 1
    max_concurrency = 4
    concurrency_buffer = 1
    scaling_delay = 5
    max_multiplexing = 3
    request_timeout = 120
    startup_timeout = 300

    def setup(self) -> None:
        # y = 3x + 2, learned from data rather than hard-coded.
        inputs = numpy.arange(0.0, 20.0).reshape(-1, 1)
        self.model = LinearRegression().fit(inputs, 3.0 * inputs.ravel() + 2.0)

    @fal.endpoint("/predict")
    def predict(self, request: PredictInput) -> PredictOutput:
        predictions = self.model.predict(numpy.array(request.x).reshape(-1, 1))
        return PredictOutput(y=[round(float(value), 6) for value in predictions])

    @fal.endpoint(
        "/healthz",
        health_check=fal.HealthCheck(timeout_seconds=4, failure_threshold=2, call_regularly=True),
    )
    def healthz(self) -> dict[str, bool]:
        unhealthy_file = os.environ.get("KUBEFAL_TEST_UNHEALTHY_FILE", "")
        if unhealthy_file and pathlib.Path(unhealthy_file).exists():
            raise RuntimeError("model is unhealthy")
        prediction = float(self.model.predict(numpy.array([[1.0]]))[0])
        return {"healthy": abs(prediction - 5.0) < 1e-6}
