"""Thin-CLI support: user errors become one clear line on stderr and exit status 2."""

from __future__ import annotations

import functools
import logging
import sys


class UserError(Exception):
    """A problem the user can fix (bad config, missing data, wrong schema). Printed without traceback."""


def main_guard(fn):
    """Wrap a CLI ``main``: ``UserError`` -> ``error: <message>`` on stderr, exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                            datefmt="%H:%M:%S", stream=sys.stderr)
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
