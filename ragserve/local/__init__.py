"""``ragserve up``: the InferenceGraph of an overlay, run as local processes."""
