"""torchrun, ending with its first failed worker's exit code and without a traceback of its own.

Plain torchrun turns any worker failure into exit 1 and a `ChildFailedError` traceback, so a bad
data file in a 2-process run would read as a crash (exit 1) although every worker had already
printed its one-line error and exited 3. This runs torchrun's own `run` and, when a worker failed,
exits with that worker's code (1 if it died from a signal), so the launcher keeps the documented codes.
"""

from __future__ import annotations

import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run


def main(argv: list[str] | None = None) -> int:
    try:
        run(parse_args(sys.argv[1:] if argv is None else argv))
    except ChildFailedError as exc:
        _, failure = exc.get_first_failure()
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
