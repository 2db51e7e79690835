"""What a run launched on several processes needs before torch is imported: the launcher's pid, and
the worker's tie to it (pipeline.train execs into torchrun when train.nproc > 1)."""
from __future__ import annotations

import os
import signal
import sys

# The launching process's pid, which pipeline.train sets before exec'ing into torchrun (same pid):
# torchrun's agent, and so every worker's parent.
LAUNCHER_PID_ENV = "CART_LAUNCHER_PID"


def die_with_launcher() -> None:
    """Make the kernel SIGKILL this worker when its launcher (torchrun's agent) dies. torchrun starts
    each worker in a session of its own, so a launcher killed by SIGKILL, which it cannot forward,
    would leave its workers training on into the run directory that a resumed run then shares. A
    worker whose launcher died before this call (its parent is no longer the pid the launcher left in
    CART_LAUNCHER_PID) kills itself. Linux only (prctl); elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    if libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    launcher = os.environ.get(LAUNCHER_PID_ENV)
    if launcher and os.getppid() != int(launcher):
        os.kill(os.getpid(), signal.SIGKILL)
