"""Synthetic head CT: phantom series with each hemorrhage subtype, written as DICOMs in the competition's shape."""
