# Copyright 2026 The llava-prumerge developers. Licensed under the Apache License, Version 2.0.
"""Configuration of PruMerge LLaVA models."""
