"""One helper for constructors of elaboratables that check their arguments."""

from __future__ import annotations

import contextlib

__all__ = ["checked_construction"]


@contextlib.contextmanager
def checked_construction(elaboratable):
    """Run a constructor's checks; if one raises, mark ``elaboratable`` as never to be used.

    Amaranth warns about every elaboratable that is garbage-collected without having been
    elaborated. A constructor that rejects its arguments leaves such an object behind, and
    the warning (an error in the tests) would hide the real one. ``_MustUse__silence`` is
    Amaranth's own switch for this; it is set here and nowhere else.
    """
    try:
        yield
    except BaseException:
        elaboratable._MustUse__silence = True
        raise
