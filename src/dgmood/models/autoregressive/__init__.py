"""Autoregressive density models: PixelCNN++."""
