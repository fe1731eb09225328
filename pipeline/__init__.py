"""The archive engine: jobs, sources, tiling, writers, manifests and the `tcmoa` CLI.

It uses the model only through `tcmoa.inference` (the `Fuser` interface).
"""
