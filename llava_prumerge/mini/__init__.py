"""The mini LLaVA-PruMerge model: trained here on Shapes-VQA, shipped as weights in the package."""
