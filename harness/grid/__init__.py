"""Grid files: validation into typed configs, expansion into run specs with stable ids."""
