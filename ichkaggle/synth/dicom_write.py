"""HU slices -> DICOM files with the header variety of the real RSNA data.

Why: the reader must be tested on every quirk the real files have, and the real files
cannot be shipped; so the synthetic ones carry them all (see docs/data.md): both pixel
representations, -2000 padding, intercept/slope in several string forms, multi-valued
zero-padded windows, implicit/explicit VR, ``ID_`` UIDs, gantry tilt and the RSNA
mis-encoding.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ..ct.dicom import quiet_validation
from ..files import write_atomic


@dataclass(frozen=True)
class Encoding:
    """How a series stores its HU (the variety of real scanners)."""

    name: str
    pixel_representation: int
    bits_stored: int
    intercept: str  # as written in the header
    slope: str
    padding: int | None  # stored value outside the scan circle; None = air
    rsna_misencoded: bool = False


#: The encodings seen in the real data; synth picks one per series.
ENCODINGS: tuple[Encoding, ...] = (
    Encoding("signed16", 1, 16, "-1024", "1", -2000),
    Encoding("signed16_float_strings", 1, 16, "-1024.000000", "1.000000", -2000),
    Encoding("unsigned12", 0, 12, "-1024", "1", 0),
    Encoding("unsigned12_exponent", 0, 12, "-01.024000E+03", "1.0", 0),
    Encoding("unsigned12_minus1000", 0, 12, "-1000", "1", 0),
    Encoding("rsna_misencoded", 0, 12, "1", "1", None, rsna_misencoded=True),
)
ENCODING_BY_NAME = {e.name: e for e in ENCODINGS}


def encode_hu(hu: np.ndarray, encoding: Encoding, outside: np.ndarray | None = None) -> np.ndarray:
    """HU (any float/int array) -> the stored values that decode back to round(HU).

    ``outside`` marks pixels beyond the scan circle that get the padding value.
    """
    values = np.rint(np.asarray(hu, dtype=np.float64)).astype(np.int64)
    intercept = int(float(encoding.intercept))
    if encoding.rsna_misencoded:
        # The mis-encoding keeps HU modulo 4096 in 12 bits (readers add 1000, wrap, subtract 1000).
        values = np.clip(values, -1000, 3095) % 4096
        stored = values.astype(np.uint16)
    elif encoding.pixel_representation == 1:
        stored = np.clip(values - intercept, -32768, 32767).astype(np.int16)
    else:
        stored = np.clip(values - intercept, 0, (1 << encoding.bits_stored) - 1).astype(np.uint16)
    if outside is not None and encoding.padding is not None:
        stored[outside] = encoding.padding
    return stored


@dataclass(frozen=True)
class SeriesHeader:
    """What every slice of one series shares."""

    patient_id: str
    study_uid: str
    series_uid: str
    encoding: Encoding
    explicit_vr: bool = True
    window_center: tuple[str, ...] = ("00040", "00040")
    window_width: tuple[str, ...] = ("00080", "00080")
    tilt_degrees: float = 0.0
    pixel_spacing: float = 0.48828125
    slice_spacing: float = 5.0


@quiet_validation()
def slice_dataset(header: SeriesHeader, sop_uid: str, index: int, stored: np.ndarray) -> Dataset:
    """One slice's dataset (file meta included) as the RSNA files lay it out."""
    rows, cols = stored.shape
    tilt = np.deg2rad(header.tilt_degrees)
    orientation = [1.0, 0.0, 0.0, 0.0, float(np.cos(tilt)), float(-np.sin(tilt))]
    normal = np.cross(orientation[:3], orientation[3:])
    origin = np.array([-cols * header.pixel_spacing / 2, -rows * header.pixel_spacing / 2 + 40.0, -60.0])
    position = origin + index * header.slice_spacing * normal

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = "9999." + str(int(sop_uid[3:], 16))
    meta.TransferSyntaxUID = ExplicitVRLittleEndian if header.explicit_vr else ImplicitVRLittleEndian
    meta.ImplementationClassUID = "1.2.40.0.13.1.1.1"

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "CT"
    ds.PatientID = header.patient_id
    ds.StudyInstanceUID = header.study_uid
    ds.SeriesInstanceUID = header.series_uid
    ds.StudyID = ""
    ds.ImagePositionPatient = [f"{v:.8g}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.9g}" for v in orientation]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.PixelSpacing = [f"{header.pixel_spacing:.8g}"] * 2
    ds.BitsAllocated = 16
    ds.BitsStored = header.encoding.bits_stored
    ds.HighBit = header.encoding.bits_stored - 1
    ds.PixelRepresentation = header.encoding.pixel_representation
    ds.WindowCenter = list(header.window_center) if len(header.window_center) > 1 else header.window_center[0]
    ds.WindowWidth = list(header.window_width) if len(header.window_width) > 1 else header.window_width[0]
    ds.RescaleIntercept = header.encoding.intercept
    ds.RescaleSlope = header.encoding.slope
    ds.PixelData = np.ascontiguousarray(stored.astype(stored.dtype.newbyteorder("<"))).tobytes()
    ds["PixelData"].VR = "OW"
    return ds


@quiet_validation()
def write_slice(path: str | os.PathLike, ds: Dataset) -> None:
    """Write atomically (temp + rename) so an interrupted synth never leaves half a file."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    write_atomic(path, buffer.getvalue())
