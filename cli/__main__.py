"""`kubectl cellar VERB ...` (the console script `kubectl-cellar`): the chart's fleet from a terminal.

Every failure is one line on stderr, `<Reason>: what to do`, with the exit codes of the jobs' table
(0 ok, 1 retryable, 2 usage, 3 permanent): a script can tell "try again" from "fix something".
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cli.cluster import Target, connect
from cli.parser import build_parser
from common.errors import EXIT_OK, EXIT_USAGE, CellarError
from common.redact import redact


def run(args: argparse.Namespace) -> int:
    if args.verb == "completion":
        from cli.completion import script

        sys.stdout.write(script(args.shell, build_parser()))
        return EXIT_OK
    from cli.verbs import HANDLERS

    cluster, context_namespace = connect(args.kubeconfig, args.context)
    target = Target(args.namespace or context_namespace, getattr(args, "all_namespaces", False))
    return HANDLERS[args.verb](cluster, target, args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return EXIT_OK if exit_.code in (0, None) else EXIT_USAGE
    try:
        return run(args)
    except CellarError as error:
        sys.stderr.write(f"{error.reason.value}: {redact(error.message)}\n")
        return error.exit_code
    except KeyboardInterrupt:
        return 130


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
