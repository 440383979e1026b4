"""Modeling code: the PruMerge token reducer and the LLaVA subclass that uses it."""
