"""The command line and its long-running jobs: the only layer above kojudge.train."""
