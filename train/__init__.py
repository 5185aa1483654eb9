"""Training: synthetic speech instruction data and the one-stage recipe (``fa-edge train config.yaml``)."""
