"""See it work: `demo` (every method on sample images, or on videos with Video-LLaVA, end to end) and
`visualize` (one image's or one video's frames' kept and merged patches beside the [CLS] attention histogram)."""
