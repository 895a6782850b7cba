"""Memory fences for numba kernels that share memory with another process or the kernel (rings).

x86 orders most loads and stores by itself; these keep the ordering on weakly ordered CPUs too, and
stop the compiler moving memory accesses across them.
"""
from __future__ import annotations

from numba.core import types
from numba.core.extending import intrinsic


def _fence(ordering: str):
    def fence(typingctx):
        def codegen(context, builder, signature, args):
            builder.fence(ordering)
            return context.get_dummy_value()
        return types.void(), codegen
    fence.__name__ = f"{ordering}_fence"
    return intrinsic(fence)


# Loads after it see everything the other side published before the index (or ownership word) the
# caller just read: put it first in a kernel that reads shared ring memory.
acquire_fence = _fence("acquire")
# Loads and stores before it complete before the caller's next store (the one that publishes them or
# hands memory back): put it last in a kernel that reads or fills shared ring memory.
release_fence = _fence("release")
# Both, and stores before it are ordered against loads after it.
full_fence = _fence("seq_cst")
