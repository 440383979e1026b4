"""See it work: `demo` (every method on sample images, end to end) and `visualize` (one image's kept
and merged patches beside its [CLS] attention histogram)."""
