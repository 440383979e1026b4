"""Helpers the tools share: conversation format, argument types, timing and checkpoint loading."""
