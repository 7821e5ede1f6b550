# mypy: disable-error-code="no-untyped-call"
# (fal.App.__init_subclass__ is untyped; the app itself stays as a user would write it.)
"""Two apps for the runner's trust of the gateway's CA: one calls the other with fal_client.

``CalleeApp`` answers on ``/team/callee`` (the path fal_client derives from the app id
``team/callee``), standing in for the gateway; ``CallerApp`` calls it with ``fal_client.run``
and reports the result or the error, so a test sees whether TLS to the callee was trusted.
"""

from __future__ import annotations

import fal
import fal_client
from pydantic import BaseModel

# fal_client retries a failed TLS handshake ten times with backoff; one attempt tells as much.
fal_client.client.MAX_ATTEMPTS = 1


class Greeting(BaseModel):
    name: str


class CalleeApp(fal.App):
    @fal.endpoint("/team/callee")
    def greet(self, data: Greeting) -> dict[str, str]:
        return {"greeting": f"hello {data.name}"}


class CallerApp(fal.App):
    @fal.endpoint("/")
    def call(self, data: Greeting) -> dict[str, object]:
        try:
            result = fal_client.run("team/callee", arguments={"name": data.name})
        except Exception as error:
            return {"error": f"{type(error).__name__}: {error}"}
        return {"result": result}
