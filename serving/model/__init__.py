"""The model layer: model-repo format, loading, precision (int8), CPU thread layout."""
