"""Filling holes with a trained flow: the MAP completion by latent inversion (invert.py) and
completions drawn from the posterior by MALA (posterior.py). Below training, which re-fills the
holes of its own images with them (`train --complete`), and below the analyses that score them."""
