"""Configuration of PruMerge LLaVA models."""
