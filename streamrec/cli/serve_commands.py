"""The lookup service: serve."""

from __future__ import annotations

import argparse
import sys

from udfs.flags import add_config_flags, config_from_args

# The [serve] extra's top-level modules: an ImportError naming one of them means the extra is missing.
SERVE_EXTRA = ("starlette", "uvicorn", "redis")


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from streamrec.serve.server import serve  # lazy: starlette and uvicorn, the [serve] extra

        return serve(config_from_args(args))  # serve.store = "redis" imports the extra's redis client here
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in SERVE_EXTRA:
            raise
        print(f"streamrec serve: needs the 'serve' extra (pip install -c constraints.txt '.[serve]'): {exc}",
              file=sys.stderr)
        return 2


def register(sub: argparse._SubParsersAction) -> None:
    """Add the serve command."""
    p = sub.add_parser("serve", help="HTTP lookup service and live storefront page over the recommendations topic")
    add_config_flags(p, ["--port", "--bind-address", "--store", "--store-backend", "--redis-url",
                         "--bootstrap-servers", "--input-topic",
                         "--output-topic", "--artifact", "--key-file", "--key-env"])
    p.set_defaults(func=cmd_serve)
