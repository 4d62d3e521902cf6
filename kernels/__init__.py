"""Triton kernels and their torch reference twins, installed as `workbench.kernels`.

This package never imports `workbench`; Triton is imported lazily (it is in
the `[gpu]` extra), so importing it on a CPU machine costs nothing.
"""
