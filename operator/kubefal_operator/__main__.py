"""``python -m kubefal_operator``: run the operator against the current KUBECONFIG.

By default it serves FalApps in every namespace, alone (no kopf peering: the chart runs one
replica with ``strategy: Recreate``), with kopf's liveness endpoint on
``http://0.0.0.0:8080/healthz``. Every setting is a flag and a ``KUBEFAL_*`` environment
variable (``kubefal_operator.config.OperatorSettings``; ``--help`` lists them).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

import kopf

from kubefal_operator import config as operator_config
from kubefal_operator import handlers


def build_parser() -> argparse.ArgumentParser:
    """The settings' flags (``kubefal_operator.config.OperatorSettings``) and the entry point's."""
    parser = operator_config.OperatorSettings.build_parser(
        prog="python -m kubefal_operator", description=__doc__
    )
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="serve FalApps only in this namespace (repeatable; default: all namespaces)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return parser


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    try:
        settings = operator_config.OperatorSettings.read(vars(arguments), os.environ)
        config = operator_config.OperatorConfig.from_settings(settings)
    except operator_config.ConfigError as error:
        raise SystemExit(str(error)) from None
    kopf.configure(verbose=arguments.verbose, quiet=arguments.quiet)
    if not arguments.verbose:
        # One "Handler ... succeeded" line per watch event buries what matters.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    kopf.run(
        registry=handlers.REGISTRY,
        clusterwide=not arguments.namespace,
        namespaces=arguments.namespace,
        standalone=settings.operator_peering is None,
        peering_name=settings.operator_peering,
        liveness_endpoint=settings.operator_liveness,
        memo=kopf.Memo(config=config, namespaces=tuple(arguments.namespace)),
    )


if __name__ == "__main__":
    main()
