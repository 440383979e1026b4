"""Export and upload of PruMerge checkpoints to the Hugging Face Hub."""
