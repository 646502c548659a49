"""quantize: the EGRU in PyTorch, pruning, quantization, the integer golden model and the packer."""
