"""Experiments built from runs: grids of runs and reports read from run directories only."""
