"""Audit runs: the steps a plan asks for, how each is executed, the run's life in the results
store, and variants run in parallel processes or on Ray. `audit.runner` re-exports the names
front ends use."""
