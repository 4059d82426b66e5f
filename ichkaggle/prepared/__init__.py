"""Prepared data: DICOMs to windowed images (loose or packed in shards), read back as pixels, in series order."""
