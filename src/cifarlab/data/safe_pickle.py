"""A restricted unpickler for CIFAR-10 batch files.

pickle.load runs whatever callable a file names, so a downloaded "batch" could run code.
This unpickler only admits the few globals that numpy arrays need; plain dicts, lists,
bytes, str and numbers need no globals at all.
"""

import io
import pickle
from typing import IO, Any, Callable


class ForbiddenGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list; `name` is 'module.qualname'."""

    def __init__(self, name: str):
        super().__init__(f"refused to unpickle forbidden global {name}")
        self.name = name


def _multiarray():
    try:  # numpy >= 2 (and 1.26 for forward compatibility)
        from numpy._core import multiarray
    except ImportError:
        from numpy.core import multiarray
    return multiarray


def _numeric():
    try:
        from numpy._core import numeric
    except ImportError:
        from numpy.core import numeric
    return numeric


def _numpy(name: str) -> Callable[[], Any]:
    return lambda: getattr(__import__("numpy"), name)


# (module, name) -> resolver. Both numpy.core (numpy 1.x, incl. the real py2 CIFAR files) and
# numpy._core (numpy 2) spellings, resolved to whichever this numpy has, without warnings.
_ALLOWED: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy", "ndarray"): _numpy("ndarray"),
    ("numpy", "dtype"): _numpy("dtype"),
    ("_codecs", "encode"): lambda: __import__("_codecs").encode,  # bytes in py3 pickles of arrays
}
for _mod in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_mod}.multiarray", "_reconstruct")] = lambda: _multiarray()._reconstruct
    _ALLOWED[(f"{_mod}.multiarray", "scalar")] = lambda: _multiarray().scalar
    _ALLOWED[(f"{_mod}.numeric", "_frombuffer")] = lambda: _numeric()._frombuffer  # protocol 5


class SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        resolve = _ALLOWED.get((module, name))
        if resolve is None:
            raise ForbiddenGlobal(f"{module}.{name}")
        return resolve()


def safe_load(f: IO[bytes], *, encoding: str = "bytes") -> object:
    """Unpickle arrays and plain data only. encoding='bytes' reads python2 pickles (as CIFAR-10's)."""
    return SafeUnpickler(f, encoding=encoding).load()


def safe_loads(data: bytes, *, encoding: str = "bytes") -> object:
    return safe_load(io.BytesIO(data), encoding=encoding)
