"""One run end to end: the job, the training loop, data parallelism, references and their caches, compute."""
