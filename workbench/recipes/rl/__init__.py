"""Asynchronous RL for reasoning (issue 5): generators, trainer, verifiers, GRPO, tasks.

See docs/ARCHITECTURE.md (after Magistral, PipelineRL and AReaL). Submodules are imported
explicitly (no imports here), so that a verifier process or a spec check pulls in only
what it needs.
"""
