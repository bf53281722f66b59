"""The network, its PyTorch reference deconvnet, the cat-12 data and the training loop."""
