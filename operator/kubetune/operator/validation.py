"""Whether a FinetuneJob's spec can run: the schema, then the rules across fields the schema cannot say.

Every problem at once, each naming its field (`spec.training.lr: ...`), so one status message lists all.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from kubetune.api import backends
from kubetune.api.finetunejob import QUEUED_SUSPEND_MESSAGE, SOURCES_ERROR, FinetuneJobSpec


def spec_problems(raw: dict[str, Any]) -> tuple[FinetuneJobSpec | None, list[str]]:
    """Parse the spec; every problem at once, each naming its field (`spec.training.lr: ...`)."""
    try:
        spec = FinetuneJobSpec.model_validate(raw or {})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            if err["type"] == SOURCES_ERROR:  # the claims the paths need: each problem names its own field
                problems.extend(err["ctx"]["problems"])
                continue
            where = ".".join(str(p) for p in ("spec", *err["loc"]))
            problems.append(f"{where}: {err['msg']}")
        return None, problems
    problems = []
    if spec.scheduling.queue_name and spec.run_policy.suspend:
        problems.append(QUEUED_SUSPEND_MESSAGE)
    backend = backends.get(spec.backend)
    collective = spec.training.distributed.backend
    if collective != "auto" and collective not in backend.collectives:
        problems.append(
            f"spec.training.distributed.backend: {spec.training.distributed.backend!r} does not run on backend "
            f"{spec.backend!r} (leave it 'auto')"
        )
    if backend.device and spec.training.training.device not in ("auto", spec.backend):
        problems.append(
            f"spec.training.training.device: {spec.training.training.device!r} on backend {spec.backend!r} "
            "would leave the requested accelerator idle"
        )
    return (spec if not problems else None), problems
