"""process_results for ctxsynth's lm-eval tasks (loaded by lm-eval from this directory via `!function utils.*`).

The scoring itself lives in ctxsynth.core.scoring (LongBench's metric functions from lm-eval for qa_f1 / rouge_l,
our own niah_recall), so it is importable and unit-tested like the rest of the package.
"""

from ctxsynth.core.scoring import process_results  # noqa: F401
