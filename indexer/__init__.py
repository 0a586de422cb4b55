"""The offline indexer: `python -m indexer build …` turns image and text corpora into a bundle."""
