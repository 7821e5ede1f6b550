"""A fal.ContainerImage app: kubefal builds it in the cluster when the operator has a build
registry (docs/packaging.md); without one, `fal deploy` fails saying so."""

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
