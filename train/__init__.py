"""Training: the natural-voice data set and the one-stage recipe (``fa-edge train config.yaml``)."""
