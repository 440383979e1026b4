"""Test fixtures that ship with the package, as transformers ships `testing_utils`: tiny random-weight
models and their inputs built in code, and the per-token reducer loop used as an oracle."""
