"""Apps on top of the runtime: the offline voice assistant (``fa-edge assistant``)."""
