"""DICOM slice -> raw pixels, Hounsfield units and slice metadata, surviving the real files' quirks.

Why not just ``ds.pixel_array``: it costs ~1.8 ms per 512x512 slice while a view of the
uncompressed buffer costs microseconds, and the RSNA files carry a known mis-encoding
that pydicom does not fix. Compressed transfer syntaxes fall back to pydicom's decoders.
Every failure is a :class:`DicomReadError` that names the file and the reason.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pydicom.config
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

#: Transfer syntaxes whose PixelData is the raw little/big endian buffer.
_NATIVE_SYNTAXES = {
    ImplicitVRLittleEndian: "<",
    ExplicitVRLittleEndian: "<",
    "1.2.840.10008.1.2.1.99": "<",  # Deflated Explicit VR Little Endian: dataset deflated, pixels native
    ExplicitVRBigEndian: ">",
}

#: The failure kinds a reader reports (``DicomReadError.kind``).
FAILURE_KINDS = ("empty", "not_dicom", "no_pixel_data", "truncated", "no_decoder", "not_grey_single_frame",
                 "bad_header")


class DicomReadError(Exception):
    """A file that cannot be read as one grey CT slice; ``kind`` is one of FAILURE_KINDS."""

    def __init__(self, path: str | os.PathLike, kind: str, reason: str):
        self.path = str(path)
        self.kind = kind
        self.reason = reason
        super().__init__(f"{self.path}: {kind}: {reason}")


@dataclass(frozen=True)
class Rescale:
    """How stored values become HU: ``HU = stored * slope + intercept``, after the RSNA fix.

    ``rsna_fix`` marks the known mis-encoding (PixelRepresentation 0, BitsStored 12,
    RescaleIntercept > -100) where the 12-bit value is really HU offset by 1000 modulo
    4096, as fastai's ``fix_pxrepr`` and appian42's ``rescale_image`` decode it.
    """

    slope: float = 1.0
    intercept: float = 0.0
    rsna_fix: bool = False

    def apply(self, stored: np.ndarray) -> np.ndarray:
        """Stored values (any integer/float dtype) -> HU as float32 (int-exact for the usual slopes)."""
        if self.rsna_fix:
            if stored.dtype.kind in "iu":
                return (((stored.astype(np.int32) + 1000) & 4095) - 1000).astype(np.float32)
            return np.mod(stored.astype(np.float32) + 1000.0, 4096.0) - 1000.0
        values = stored.astype(np.float32)
        if self.slope != 1.0:
            values *= np.float32(self.slope)
        values += np.float32(self.intercept)
        return values


@dataclass
class SliceMeta:
    """What one slice says about itself: identity, geometry and the display window it suggests."""

    ID: str
    PatientID: str = ""
    StudyInstanceUID: str = ""
    SeriesInstanceUID: str = ""
    SOPInstanceUID: str = ""
    position: float = float("nan")  # along the slice normal, mm
    ipp_x: float = float("nan")
    ipp_y: float = float("nan")
    ipp_z: float = float("nan")
    orientation: str = ""
    pixel_spacing: float = float("nan")
    rows: int = 0
    columns: int = 0
    window_center: float = float("nan")
    window_width: float = float("nan")
    pixel_representation: int = -1
    bits_stored: int = -1
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    rsna_fix: bool = False
    transfer_syntax: str = ""

    def as_row(self) -> dict:
        return dict(self.__dict__)  # flat values only: no deep copy needed (asdict costs 0.15 ms)


def first_number(value, default: float = float("nan")) -> float:
    """First value of a possibly multi-valued (``a\\b`` or list), zero-padded DS/IS as float."""
    values = split_values(value)
    if not values:
        return default
    try:
        return float(values[0])
    except (TypeError, ValueError):
        return default


def split_values(value) -> list[str]:
    """A DICOM value as a list of stripped strings: handles lists, MultiValue and ``a\\b`` text."""
    if value is None:
        return []
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        items = [str(v) for v in value]
    else:
        items = str(value).split("\\")
    return [item.strip(" \x00") for item in items if item.strip(" \x00")]


def slice_position(ipp, iop) -> float:
    """Position of the slice along its normal (handles gantry tilt); z when orientation is absent."""
    ipp, iop = split_values(ipp), split_values(iop)
    if len(ipp) != 3:
        return float("nan")
    x, y, z = (float(v) for v in ipp)
    if len(iop) == 6:  # plain floats: numpy's cross/norm cost more than the rest of the header
        r1, r2, r3, c1, c2, c3 = (float(v) for v in iop)
        n1, n2, n3 = r2 * c3 - r3 * c2, r3 * c1 - r1 * c3, r1 * c2 - r2 * c1
        norm = (n1 * n1 + n2 * n2 + n3 * n3) ** 0.5
        if norm > 1e-6:
            return (x * n1 + y * n2 + z * n3) / norm
    return z


def read_dataset(path: str | os.PathLike) -> pydicom.Dataset:
    """Parse a file with pydicom, turning every way it can fail into a named DicomReadError."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise DicomReadError(path, "not_dicom", f"cannot open: {err.strerror or err}") from err
    if size == 0:
        raise DicomReadError(path, "empty", "empty file (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(path)
        except InvalidDicomError:
            pass  # no 128-byte preamble + 'DICM': some writers omit it; try without
        except Exception as err:  # pydicom raises many types on damaged headers
            raise DicomReadError(path, "not_dicom", f"unreadable header: {type(err).__name__}: {err}") from err
        try:
            ds = pydicom.dcmread(path, force=True)
        except Exception as err:
            raise DicomReadError(path, "not_dicom", f"not a DICOM file ({type(err).__name__}: {err})") from err
    if "PixelData" not in ds and len(ds) < 3:
        raise DicomReadError(path, "not_dicom", "not a DICOM file (no preamble and no recognisable elements)")
    return ds


def rescale_of(fields) -> Rescale:
    """The stored -> HU mapping of a slice, with the RSNA mis-encoding detected."""
    slope = first_number(fields.get("RescaleSlope"), 1.0)
    intercept = first_number(fields.get("RescaleIntercept"), 0.0)
    if not np.isfinite(slope) or slope == 0:
        slope = 1.0
    if not np.isfinite(intercept):
        intercept = 0.0
    rsna_fix = (
        _int(fields, "PixelRepresentation", 0) == 0
        and _int(fields, "BitsStored", 16) == 12
        and fields.get("RescaleIntercept") is not None
        and intercept > -100
    )
    return Rescale(slope=slope, intercept=intercept, rsna_fix=rsna_fix)


def _int(fields, name: str, default: int) -> int:
    value = fields.get(name)
    if value is None or value == "":
        return default
    return int(first_number(value, default))


def transfer_syntax(fields) -> pydicom.uid.UID:
    """The transfer syntax of a pydicom Dataset (file meta) or of a fast-parsed header dict."""
    meta = getattr(fields, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else fields.get("TransferSyntaxUID")
    return pydicom.uid.UID(str(syntax)) if syntax else ImplicitVRLittleEndian


def stored_pixels(fields, path: str | os.PathLike = "<dataset>") -> np.ndarray:
    """The stored values of a single-frame grey slice as a 2-D integer array.

    Native transfer syntaxes take a zero-copy view of the buffer (sign-extended when
    BitsStored < BitsAllocated), others go through pydicom's decoders.
    """
    if fields.get("PixelData") is None:
        raise DicomReadError(path, "no_pixel_data", "no PixelData element")
    try:
        rows, cols = int(fields.get("Rows")), int(fields.get("Columns"))
        bits_allocated = int(fields.get("BitsAllocated"))
    except (TypeError, ValueError) as err:
        raise DicomReadError(path, "bad_header", f"missing or invalid Rows/Columns/BitsAllocated: {err}") from err
    pixel_repr = _int(fields, "PixelRepresentation", 0)
    bits_stored = _int(fields, "BitsStored", bits_allocated)
    samples = _int(fields, "SamplesPerPixel", 1)
    frames = _int(fields, "NumberOfFrames", 1)
    if samples != 1 or frames != 1:
        raise DicomReadError(path, "not_grey_single_frame",
                             f"SamplesPerPixel={samples}, NumberOfFrames={frames}; expected one grey frame")
    syntax = transfer_syntax(fields)
    order = _NATIVE_SYNTAXES.get(syntax)
    if order is not None and bits_allocated in (8, 16, 32):
        itemsize = bits_allocated // 8
        expected = rows * cols * itemsize
        buffer = fields.get("PixelData")
        if len(buffer) < expected:
            raise DicomReadError(path, "truncated", f"PixelData has {len(buffer)} of {expected} bytes")
        kind = "i" if pixel_repr == 1 else "u"
        pixels = np.frombuffer(buffer, dtype=f"{order}{kind}{itemsize}", count=rows * cols).reshape(rows, cols)
        if kind == "i" and bits_stored < bits_allocated:
            shift = bits_allocated - bits_stored
            pixels = (pixels << shift) >> shift  # sign-extend the stored bits
        return pixels
    if not isinstance(fields, pydicom.Dataset):
        raise DicomReadError(path, "no_decoder", f"{syntax.name} needs pydicom's decoders")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = fields.pixel_array
    except (NotImplementedError, RuntimeError, ImportError) as err:
        raise DicomReadError(path, "no_decoder", f"no installed decoder for {syntax.name}: {err}") from err
    except ValueError as err:
        kind = "truncated" if "less than expected" in str(err) or "truncat" in str(err).lower() else "bad_header"
        raise DicomReadError(path, kind, str(err)) from err
    except Exception as err:
        raise DicomReadError(path, "no_decoder", f"{type(err).__name__}: {err}") from err
    if pixels.ndim != 2:
        raise DicomReadError(path, "not_grey_single_frame", f"decoded array has shape {pixels.shape}")
    return pixels


def slice_meta(fields, image_id: str, rescale: Rescale | None = None) -> SliceMeta:
    """Identity and geometry of a slice as plain values (UID-invalid ``ID_`` strings kept as text)."""
    rescale = rescale or rescale_of(fields)
    ipp = split_values(fields.get("ImagePositionPatient"))
    iop = split_values(fields.get("ImageOrientationPatient"))
    ipp_values = [float(v) for v in ipp] if len(ipp) == 3 else [float("nan")] * 3
    return SliceMeta(
        ID=image_id,
        PatientID=_text(fields, "PatientID"),
        StudyInstanceUID=_text(fields, "StudyInstanceUID"),
        SeriesInstanceUID=_text(fields, "SeriesInstanceUID"),
        SOPInstanceUID=_text(fields, "SOPInstanceUID"),
        position=slice_position(ipp, iop),
        ipp_x=ipp_values[0],
        ipp_y=ipp_values[1],
        ipp_z=ipp_values[2],
        orientation=" ".join(f"{float(v):.6g}" for v in iop),
        pixel_spacing=first_number(fields.get("PixelSpacing")),
        rows=_int(fields, "Rows", 0),
        columns=_int(fields, "Columns", 0),
        window_center=first_number(fields.get("WindowCenter")),
        window_width=first_number(fields.get("WindowWidth")),
        pixel_representation=_int(fields, "PixelRepresentation", -1),
        bits_stored=_int(fields, "BitsStored", -1),
        rescale_slope=rescale.slope,
        rescale_intercept=rescale.intercept,
        rsna_fix=rescale.rsna_fix,
        transfer_syntax=transfer_syntax(fields).name,
    )


def _text(fields, name: str) -> str:
    value = fields.get(name)
    return "" if value is None else str(value).strip(" \x00")


@contextmanager
def quiet_validation():
    """Silence pydicom's value validation: RSNA's ``ID_...`` UIDs are invalid by design."""
    settings = pydicom.config.settings
    saved = settings.reading_validation_mode, settings.writing_validation_mode
    settings.reading_validation_mode = settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = saved


def read_stored(path: str | os.PathLike, fast: bool = True) -> tuple[np.ndarray, Rescale, SliceMeta]:
    """One file -> (stored values, their HU mapping, metadata); the fast path of ``prepare``.

    Plain little-endian files are parsed by :mod:`ichkaggle.ct.fast_header` (no pydicom
    objects); anything it does not handle goes through pydicom with the same logic.
    """
    fields = None
    if fast:
        from .fast_header import parse_native_file

        fields = parse_native_file(path)
    with quiet_validation():
        if fields is None:
            fields = read_dataset(path)
        pixels = stored_pixels(fields, path)
        rescale = rescale_of(fields)
        return pixels, rescale, slice_meta(fields, Path(path).stem, rescale)
