"""Test-only fault injection: SIGKILL a pipeline stage at its Nth file rename (os.replace).

Python imports ``sitecustomize`` at start-up from the path, so a test puts this folder on PYTHONPATH and
sets ``TT_KILL_AT_RENAME=STAGE:N:before`` (or ``:after``): the process running ``python -m
src.pipeline.STAGE`` then dies before (after) its Nth rename, as a kill -9 or a power cut would take it.
Other processes started with the same environment (``dvc`` itself) are left alone. Every atomic write
of the project ends in such a rename, and so does setting a checkpoint aside.
"""

import os
import signal
import sys

_SPEC = os.environ.get("TT_KILL_AT_RENAME")

if _SPEC:
    _stage, _n, _when = _SPEC.split(":")
    _target, _renames, _real_replace = int(_n), 0, os.replace

    def _replace(src, dst, *args, **kwargs):
        global _renames
        if not sys.argv or not sys.argv[0].endswith(os.path.join("src", "pipeline", f"{_stage}.py")):
            return _real_replace(src, dst, *args, **kwargs)
        _renames += 1
        if _renames == _target and _when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = _real_replace(src, dst, *args, **kwargs)
        if _renames == _target and _when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    os.replace = _replace
