"""A minimal reader of plain little-endian DICOM headers: the elements a CT slice needs, fast.

Why: building pydicom's Dataset and converting its elements costs ~1 ms a slice, more
than decoding, windowing and writing together; the RSNA files are simple (preamble,
explicit or implicit VR little endian, no sequences before the pixels). This walks the
bytes once and returns a plain dict; anything unusual (no preamble, big endian,
compressed, undefined lengths, odd VRs) returns None so the caller uses pydicom.
"""

from __future__ import annotations

import os
import struct

#: (group, element) -> (keyword, value kind); "US" is a 2-byte unsigned, "str" text.
WANTED: dict[tuple[int, int], tuple[str, str]] = {
    (0x0008, 0x0018): ("SOPInstanceUID", "str"),
    (0x0010, 0x0020): ("PatientID", "str"),
    (0x0020, 0x000D): ("StudyInstanceUID", "str"),
    (0x0020, 0x000E): ("SeriesInstanceUID", "str"),
    (0x0020, 0x0032): ("ImagePositionPatient", "str"),
    (0x0020, 0x0037): ("ImageOrientationPatient", "str"),
    (0x0028, 0x0002): ("SamplesPerPixel", "US"),
    (0x0028, 0x0008): ("NumberOfFrames", "str"),
    (0x0028, 0x0010): ("Rows", "US"),
    (0x0028, 0x0011): ("Columns", "US"),
    (0x0028, 0x0030): ("PixelSpacing", "str"),
    (0x0028, 0x0100): ("BitsAllocated", "US"),
    (0x0028, 0x0101): ("BitsStored", "US"),
    (0x0028, 0x0103): ("PixelRepresentation", "US"),
    (0x0028, 0x1050): ("WindowCenter", "str"),
    (0x0028, 0x1051): ("WindowWidth", "str"),
    (0x0028, 0x1052): ("RescaleIntercept", "str"),
    (0x0028, 0x1053): ("RescaleSlope", "str"),
}
PIXEL_DATA = (0x7FE0, 0x0010)
TRANSFER_SYNTAX = (0x0002, 0x0010)
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_UNDEFINED = 0xFFFFFFFF
_TAG = struct.Struct("<HH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


def parse_native_file(path: str | os.PathLike) -> dict | None:
    """Read a file and parse it; None when pydicom should handle it (or it is not DICOM)."""
    try:
        with open(path, "rb", buffering=0) as fh:  # one unbuffered read: half the cost of a buffered one
            data = fh.readall()
    except OSError:
        return None
    return parse_native(data)


def parse_native(data: bytes) -> dict | None:
    """Header fields + a view of PixelData of a preamble'd implicit/explicit VR LE file, else None."""
    if len(data) < 132 or data[128:132] != b"DICM":
        return None
    view = memoryview(data)
    try:
        fields: dict = {}
        pos = _walk(view, 132, explicit=True, fields=fields, meta_only=True)
        syntax = fields.get("TransferSyntaxUID")
        if syntax not in (IMPLICIT_LE, EXPLICIT_LE) or pos is None:
            return None
        if _walk(view, pos, explicit=syntax == EXPLICIT_LE, fields=fields, meta_only=False) is None:
            return None
    except (struct.error, UnicodeDecodeError, ValueError):
        return None
    return fields


def _walk(view: memoryview, pos: int, explicit: bool, fields: dict, meta_only: bool) -> int | None:
    """Read elements from pos; returns where the group-2 meta ends (meta_only) or -1 at the pixels."""
    end = len(view)
    while pos + 8 <= end:
        group, element = _TAG.unpack_from(view, pos)
        if meta_only and group != 0x0002:
            return pos
        if explicit:
            vr = bytes(view[pos + 4 : pos + 6])
            if vr in _LONG_VRS:
                length = _U32.unpack_from(view, pos + 8)[0]
                pos += 12
            else:
                length = _U16.unpack_from(view, pos + 6)[0]
                pos += 8
        else:
            length = _U32.unpack_from(view, pos + 4)[0]
            pos += 8
        tag = (group, element)
        if tag == PIXEL_DATA:
            if length == _UNDEFINED:
                return None  # encapsulated (compressed) pixels: pydicom's job
            fields["PixelData"] = view[pos : pos + length]
            return -1
        if length == _UNDEFINED:
            return None  # a sequence of undefined length: leave it to pydicom
        value = view[pos : pos + length]
        pos += length
        if tag == TRANSFER_SYNTAX:
            fields["TransferSyntaxUID"] = _text(value)
        elif tag in WANTED:
            keyword, kind = WANTED[tag]
            if kind == "US":
                if length != 2:
                    return None
                fields[keyword] = _U16.unpack_from(value)[0]
            else:
                fields[keyword] = _text(value)
    return None if meta_only else -1  # no PixelData: the caller reports it


def _text(value: memoryview) -> str:
    return bytes(value).decode("latin-1").strip(" \x00")
