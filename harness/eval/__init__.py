"""Zero-shot evaluation: one registry of tasks, embedded and on disk, scored through clip_benchmark."""
from harness.eval import embedded, tasksets  # noqa: F401  (their tasks register in harness.eval.tasks on import)
