"""A tiny real fal.App for the CLI tests: echoes text, logs a line, says its setup ran."""

import fal
import pydantic


class EchoInput(pydantic.BaseModel):
    text: str


class EchoOutput(pydantic.BaseModel):
    text: str
    setup_done: bool


class CliEchoApp(fal.App):  # type: ignore[no-untyped-call]
    keep_alive = 120
    machine_type = "S"
    max_multiplexing = 2
    min_concurrency = 0
    max_concurrency = 4
    request_timeout = 60
    requirements = ["pyfiglet==1.0.2"]

    def setup(self) -> None:
        self.setup_done = True

    @fal.endpoint("/")
    def echo(self, payload: EchoInput) -> EchoOutput:
        print(f"echoing {payload.text!r}", flush=True)  # noqa: T201 - the log line tests expect
        return EchoOutput(text=payload.text, setup_done=self.setup_done)
