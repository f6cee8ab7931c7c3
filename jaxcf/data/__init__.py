"""jaxcf.data: procedural phantoms in the real datasets' layouts, readers, numpy Grain
transforms, one-off preparation into fast shards, and the training pipelines."""
