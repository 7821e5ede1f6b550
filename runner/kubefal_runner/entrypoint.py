"""``python -m kubefal_runner``: read the settings, install requirements, then serve the app.

The requirements are installed before anything of the app's world (``fal``, uvicorn, the app) is
imported, so the packages they bring are the ones the app imports. That is why `serving` is
imported only after the install.
"""

from __future__ import annotations

import collections.abc
import logging
import os
import sys
import time

from kubefal_runner import exit_codes, installing, settings, trust

logger = logging.getLogger("kubefal_runner.start")


def _configure_runner_logger() -> None:
    """The runner's own messages go to the real stderr; the root logger stays the app's to set."""
    runner_logger = logging.getLogger("kubefal_runner")
    if runner_logger.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    runner_logger.addHandler(handler)
    runner_logger.setLevel(logging.INFO)
    runner_logger.propagate = False


def _install_requirements(runner_settings: settings.RunnerSettings) -> float:
    """Install (or reuse) the requirement set; return the seconds it took."""
    environment = installing.prepare_environment(
        layers=runner_settings.requirement_layers,
        cache_directory=runner_settings.requirements_cache,
    )
    installing.activate_environment(environment)
    layers = len(runner_settings.requirement_layers)
    logger.info(
        "requirements %s in %.2f s (%s; %d of %d layers found in the cache)",
        "reused from cache" if environment.reused else "installed",
        environment.seconds,
        environment.path,
        environment.reused_layers,
        layers,
    )
    return environment.seconds


def main(argv: collections.abc.Sequence[str] | None = None) -> int:
    """Run the runner; return the process exit code (see `exit_codes`)."""
    started_at = time.monotonic()
    _configure_runner_logger()
    try:
        runner_settings = settings.load_settings(
            argv=sys.argv[1:] if argv is None else argv, environ=os.environ
        )
    except settings.SettingsError as error:
        logger.error("%s", error)
        return exit_codes.BAD_SETTINGS

    try:
        bundle = trust.install_gateway_ca()
    except (trust.TrustError, OSError) as error:
        logger.error("cannot trust the gateway's CA: %s", error)
        return exit_codes.BAD_SETTINGS
    if bundle is not None:
        logger.info("trusting the gateway's CA besides the default roots (%s)", bundle)
    try:
        return _install_and_serve(runner_settings, started_at=started_at)
    finally:
        # the bundle lives in the shared temporary directory (kubefal run: the host's /tmp)
        if bundle is not None:
            bundle.unlink(missing_ok=True)


def _install_and_serve(runner_settings: settings.RunnerSettings, *, started_at: float) -> int:
    requirements_seconds = 0.0
    if runner_settings.requirement_layers:
        try:
            requirements_seconds = _install_requirements(runner_settings)
        except installing.RequirementsInstallError as error:
            logger.error(
                "could not install the app's requirements (exit code %d): %s",
                exit_codes.REQUIREMENTS_FAILED,
                error,
            )
            return exit_codes.REQUIREMENTS_FAILED

    from kubefal_runner import falhosts, serving  # only after the install

    falhosts.redirect_kv(os.environ)

    return serving.serve_app(
        runner_settings, started_at=started_at, requirements_seconds=requirements_seconds
    )
