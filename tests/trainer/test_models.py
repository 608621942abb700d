"""Exporting the builtin GGUF model: never a half export in the cache, whoever runs it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

# Rank 1 of a real 2-process gloo group tries to export: transformers would save the tokenizer and no weights
# there (it saves on global rank 0 only), so the export must refuse before writing anything.
RANK_ONE_EXPORTS = textwrap.dedent(
    """
    import sys
    import torch.distributed as dist
    from pathlib import Path
    from kubetune.trainer.errors import ModelError
    from kubetune.trainer.models import builtin_gguf, export_gguf

    rank, store, dest = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    if rank == 1:
        try:
            export_gguf(builtin_gguf("smollm2-135m-instruct"), dest)
        except ModelError as exc:
            print(exc)
    dist.barrier()
    """
)


def test_a_worker_other_than_rank_zero_refuses_to_export_and_writes_nothing(tmp_path: Path):
    dest = tmp_path / "cache" / "models" / "smollm2-135m-instruct"
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", RANK_ONE_EXPORTS, str(rank), str(tmp_path / "store"), str(dest)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outs = [r.communicate(timeout=300) for r in ranks]
    assert [r.returncode for r in ranks] == [0, 0], [err[-2000:] for _, err in outs]
    assert "rank 1 of a process group cannot write weights" in outs[1][0], outs[1]
    assert not (tmp_path / "cache").exists()  # not even the models/ directory
