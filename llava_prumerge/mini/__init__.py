"""The mini LLaVA-PruMerge model: trained here on Shapes-VQA, shipped as weights in the package."""

# The --model names of the mini models shipped in the package (eval, demo, visualize), and their weights
# folders beside this file: the [CLS] (CLIP-architecture) tower, and the SigLIP-architecture one.
SHIPPED_MINI_MODELS = {"mini": "weights", "mini-siglip": "weights-siglip"}
