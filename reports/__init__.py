"""What comes out of a run: the run directory's files and the console summary."""
