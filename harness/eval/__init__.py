"""Zero-shot evaluation: one registry of tasks, embedded and on disk, scored through clip_benchmark."""
