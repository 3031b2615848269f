"""Triton kernels. Import lazily (after TRITON_INTERPRET is set, for the CPU interpreter)."""
