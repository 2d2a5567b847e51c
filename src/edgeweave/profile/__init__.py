"""Device profiles: the catalog of device and link classes, this host's probe, the cost model."""
