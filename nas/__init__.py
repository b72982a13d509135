"""cellsearch: neural architecture search over recurrent cells."""

import os as _os

__version__ = "0.1.0"

# In a source checkout used without installation (PYTHONPATH=<repo>), the top-level
# controllers/, workers/ and storage/ folders serve as nas.controllers, nas.workers and
# nas.storage, as the installed package maps them.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_root, "controllers", "__init__.py")) and _root not in __path__:
    __path__.append(_root)
