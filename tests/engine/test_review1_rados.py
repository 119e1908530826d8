"""review1: lease objects of staged copies on a rados:// store."""

from __future__ import annotations

import os
import subprocess
import sys

from test_frontends import COPIER, CS, _staged, url  # noqa: F401

import ebsengine

# the same copier, but a process of this host (its real process token)
LOCAL_COPIER = COPIER.replace("domains.process_token = lambda: other", "pass")


def test_a_copy_staged_by_a_dead_process_of_this_host_leaves_no_lease_object(url):
    with ebsengine.Engine(url("b")) as b:
        vid = b.create_volume(1).id
        with b.open_volume(vid) as dev:
            dev.pwrite(os.urandom(12 * CS), 0)
        sid = b.create_snapshot(vid).id
    a = subprocess.Popen([sys.executable, "-c", LOCAL_COPIER, url("a"), sid],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ))
    try:
        assert a.stdout is not None and a.stdout.readline() == "copying\n"
        a.kill()
        a.wait()
    finally:
        a.kill()
        a.wait()
        for f in (a.stdin, a.stdout):
            if f is not None:
                f.close()
    with ebsengine.Engine(url("b")) as b:  # its copier is dead (this host can tell)
        assert _staged(b) == []
        be = b._store.backend
        assert not list(be.conn.meta.list_objects("lease.copy-"))
