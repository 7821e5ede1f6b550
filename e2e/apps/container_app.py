"""A fal.ContainerImage app: kubefal does not build images in the cluster yet, so `fal deploy`
must fail with what to do instead of running it on the generic runner."""

import fal
from fal.container import ContainerImage


class ContainerApp(
    fal.App,  # type: ignore[no-untyped-call]
    kind="container",
    image=ContainerImage.from_dockerfile_str("FROM python:3.11-slim\nRUN pip install pyjokes\n"),
):
    @fal.endpoint("/")
    def hello(self) -> dict[str, str]:
        return {"hello": "from a container"}
