"""The HTTP search service: a thin FastAPI layer over the clipsearch core."""
