"""What comes out of a run: the run directory's files, the console summary, and (later) plots."""
