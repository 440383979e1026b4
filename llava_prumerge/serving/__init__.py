"""Serving PruMerge Hub folders with vLLM: the plugin, its model class, the `serve` command, the engine benchmark."""
