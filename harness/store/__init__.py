"""The result store: run directories and their records, leases."""
