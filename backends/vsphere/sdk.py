"""pyVmomi typed as Any for the vsphere backend: its stubs leave the data-object
constructors and pyVim.connect untyped, which mypy --strict rejects at every call."""

from __future__ import annotations

from typing import Any

import pyVim.connect
import pyVmomi

vim: Any = getattr(pyVmomi, "vim")  # noqa: B009 - the stubs do not declare it
vmodl: Any = getattr(pyVmomi, "vmodl")  # noqa: B009
SmartStubAdapter: Any = pyVim.connect.SmartStubAdapter
