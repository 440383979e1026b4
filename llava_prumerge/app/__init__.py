"""`llava-prumerge app`: PruMerge in a browser (Gradio), and the Hugging Face Space that runs it on a Hub model."""
