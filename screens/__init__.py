"""Textual screens and widgets of the dashboard, installed as `workbench.screens`.

Dependencies point one way: screens -> workbench -> kernels. Nothing in
`workbench` imports this package; `workbench.app` composes these screens.
"""
