# Copyright 2026 The llava-prumerge developers. Licensed under the Apache License, Version 2.0.
"""Modeling code: the PruMerge token reducer and the LLaVA subclass that uses it."""
