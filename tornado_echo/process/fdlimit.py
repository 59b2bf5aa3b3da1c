"""The file-descriptor limit (RLIMIT_NOFILE), raised once at start by the server and the
load tester alike: every connection is a descriptor.

The soft limit is raised to the hard one, which is the administrator's (``ulimit -Hn``,
systemd ``LimitNOFILE=``) and never raised here. Linux caps the limit at fs.nr_open, so an
"unlimited" limit only occurs elsewhere; it is reported as :data:`UNLIMITED`, a number any
comparison with a count of descriptors gets right.
"""

from __future__ import annotations

import logging
import resource
import sys

logger = logging.getLogger(__name__)

UNLIMITED = sys.maxsize


def raise_soft_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit now in force.

    ``wanted`` is how many descriptors the caller needs; it matters only when the hard limit
    is unlimited, where it is asked for rather than the impossible infinity. A refused raise
    is logged as a WARNING and the unchanged soft limit returned; judging whether it is
    enough is the caller's business.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinity = resource.RLIM_INFINITY
    if soft == infinity:
        return UNLIMITED
    target = max(soft, wanted) if hard == infinity else hard
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            logger.warning("cannot raise RLIMIT_NOFILE from %d to %d: %s", soft, target, exc)
        else:
            soft = target
    return soft
