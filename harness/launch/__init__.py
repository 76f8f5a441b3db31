"""Launching: executors (local, debug, Slurm), leases taken, stage dependencies, estimates, status."""
