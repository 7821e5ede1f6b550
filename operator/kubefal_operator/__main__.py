"""``python -m kubefal_operator``: run the operator against the current KUBECONFIG.

By default it serves FalApps in every namespace, alone (no kopf peering: the chart runs one
replica with ``strategy: Recreate``), with kopf's liveness endpoint on
``http://0.0.0.0:8080/healthz``. Settings that are not flags come from the environment
(``kubefal_operator.config``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import Sequence

import kopf

from kubefal_operator import config as operator_config
from kubefal_operator import handlers


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kubefal_operator", description=__doc__)
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="serve FalApps only in this namespace (repeatable; default: all namespaces)",
    )
    parser.add_argument(
        "--liveness",
        default=os.environ.get("KUBEFAL_OPERATOR_LIVENESS", "http://0.0.0.0:8080/healthz"),
        help="kopf liveness endpoint URL (env KUBEFAL_OPERATOR_LIVENESS)",
    )
    parser.add_argument(
        "--peering",
        default=os.environ.get("KUBEFAL_OPERATOR_PEERING") or None,
        help="kopf peering name for several replicas (default: standalone)",
    )
    parser.add_argument(
        "--gateway-admin-url",
        default=None,
        help="follow this gateway's scaling signals with the builtin actuator "
        "(env KUBEFAL_GATEWAY_ADMIN_URL; default: replicas follow minConcurrency)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    kopf.configure(verbose=arguments.verbose, quiet=arguments.quiet)
    if not arguments.verbose:
        # One "Handler ... succeeded" line per watch event buries what matters.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    config = operator_config.OperatorConfig.from_environment()
    if arguments.gateway_admin_url:
        config = dataclasses.replace(config, gateway_admin_url=arguments.gateway_admin_url)
        if config.render.runner_announce_url is None and not os.environ.get(
            "KUBEFAL_RUNNER_ANNOUNCE_URL"
        ):
            announce = operator_config.runner_announce_url(arguments.gateway_admin_url)
            config = dataclasses.replace(
                config, render=dataclasses.replace(config.render, runner_announce_url=announce)
            )
    kopf.run(
        registry=handlers.REGISTRY,
        clusterwide=not arguments.namespace,
        namespaces=arguments.namespace,
        standalone=arguments.peering is None,
        peering_name=arguments.peering,
        liveness_endpoint=arguments.liveness,
        memo=kopf.Memo(config=config, namespaces=tuple(arguments.namespace)),
    )


if __name__ == "__main__":
    main()
