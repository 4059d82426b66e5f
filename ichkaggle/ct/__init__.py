"""Reading head CT slices: DICOM files to stored pixels, HU and slice metadata, and windowing to uint8."""
