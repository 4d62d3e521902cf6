"""The ``selftest`` kind: `wb launch` a spec of kind selftest, on this machine or a host.

Why a kind: selftest answers are runs (`wb ls --kind selftest`), so the kind is in
the recipe registry like every other, with its key metric (``selftest/failed``) for
run tables. As a launchable spec it also runs under the worker, detached or on a
configured host (`resources.host`) and mirrored back, like any experiment:

    kind = "selftest"
    [selftest]
    quick = true
    only = ["kernels/*"]

`wb selftest` is the direct way (a table, an exit code); both record the same way.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from workbench.recipes import Context
from workbench.spec import Section, SpecBase


class SelftestSection(Section):
    quick: bool = Field(False, description="The quick sizes (about 3 minutes on one GPU).")
    only: list[str] = Field(default_factory=list, description="Globs of check names to run "
                            "(default: all), e.g. [\"kernels/*\"].")

    @field_validator("only")
    @classmethod
    def _names_checks(cls, only: list[str]) -> list[str]:
        """A glob that matches no check is refused when the spec loads, before a run
        exists (the registry imports no torch)."""
        from workbench.selftest import select

        try:
            select(only)
        except ValueError as exc:
            raise ValueError(str(exc).removeprefix("--only ")) from None
        return only


class SelftestSpec(SpecBase):
    kind: Literal["selftest"]
    selftest: SelftestSection = Field(default_factory=SelftestSection)


def run(spec: SelftestSpec, ctx: Context) -> None:
    """Entry point of the kind: the checks into the worker's run; a failed check fails
    the run (the worker records it, exit code 1)."""
    from workbench.selftest import FAIL, Facts, select
    from workbench.selftest.runner import execute

    checks = select(spec.selftest.only)
    results, _ = execute(ctx.run, checks, quick=spec.selftest.quick, facts=Facts.probe(),
                         say=lambda text: print(text, flush=True), log=None, end_run=False)
    failed = [r.name for r in results if r.status == FAIL]
    if failed:
        raise RuntimeError(f"selftest: {len(failed)} check(s) failed: {', '.join(failed)}")
