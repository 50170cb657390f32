"""Latent-variable models: VAEs with several decoders and posteriors."""
