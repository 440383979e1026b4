"""`llava-prumerge train`: the paper's LoRA recipe with the reducer in the loop, then merge and export."""
