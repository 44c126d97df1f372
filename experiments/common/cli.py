"""Thin-CLI support: user errors become one clear line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import errno
import functools
import logging
import sys

#: OS errors that mean "the output location cannot be written": one line, exit 2, instead of a traceback
UNWRITABLE = (PermissionError, NotADirectoryError, IsADirectoryError, FileExistsError)
UNWRITABLE_ERRNOS = (errno.EROFS, errno.ENOSPC, errno.EDQUOT)


def thread_count(text: str) -> int:
    """argparse ``type=`` of every ``--threads``: a whole number >= 0 (0 = torch's default)."""
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a thread count: give a whole number >= 0 "
                                         "(0 = torch's default, every core)")
    return n


class UserError(Exception):
    """A problem the user can fix (bad config, missing data, wrong schema). Printed without traceback."""


def main_guard(fn):
    """Wrap a CLI ``main``: ``UserError`` -> ``error: <message>`` on stderr, exit 2; an unwritable output
    location (permission, not a directory, read-only file system, no space) likewise."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                            datefmt="%H:%M:%S", stream=sys.stderr)
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        except OSError as e:
            if not isinstance(e, UNWRITABLE) and e.errno not in UNWRITABLE_ERRNOS:
                raise
            print(f"error: {e.filename or 'a file'}: {e.strerror or e} (check that the output directory is "
                  "writable and has space left)", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
