"""DICOM reading: every header variety of the real data decodes to the right HU; every failure is named."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_modality_lut
from pydicom.uid import ExplicitVRBigEndian, JPEGLosslessSV1, RLELossless

from ichkaggle.ct.dicom import FAILURE_KINDS, DicomReadError, read_stored, slice_position
from ichkaggle.synth.dicom_write import ENCODINGS

from .conftest import REAL_SAMPLE
from .dicom_factory import hu_pattern, read_hu, write


@pytest.mark.parametrize("encoding", [e.name for e in ENCODINGS])
@pytest.mark.parametrize("explicit_vr", [True, False])
def test_every_encoding_decodes_to_the_written_hu(tmp_path, encoding, explicit_vr):
    hu = hu_pattern()
    path = write(tmp_path / "x.dcm", hu, encoding, explicit_vr=explicit_vr)
    decoded, meta = read_hu(path)
    assert decoded.shape == hu.shape
    assert np.array_equal(decoded, hu)
    assert meta.rsna_fix == (encoding == "rsna_misencoded")
    assert meta.transfer_syntax.startswith("Explicit" if explicit_vr else "Implicit")


@pytest.mark.parametrize("encoding", [e.name for e in ENCODINGS if not e.rsna_misencoded])
def test_fast_path_equals_pydicom_modality_lut(tmp_path, encoding):
    path = write(tmp_path / "x.dcm", hu_pattern(), encoding)
    ds = pydicom.dcmread(path)
    expected = apply_modality_lut(ds.pixel_array, ds)
    assert np.array_equal(read_hu(path)[0], expected)


def test_rsna_misencoding_is_not_what_pydicom_gives(tmp_path):
    """PixelRepresentation 0, BitsStored 12, intercept > -100: the raw LUT would be wrong."""
    hu = hu_pattern()
    path = write(tmp_path / "x.dcm", hu, "rsna_misencoded")
    ds = pydicom.dcmread(path)
    assert ds.PixelRepresentation == 0 and ds.BitsStored == 12 and float(ds.RescaleIntercept) > -100
    naive = apply_modality_lut(ds.pixel_array, ds)
    assert not np.array_equal(naive, hu)  # air (-1000) reads as +3097 without the fix
    assert np.array_equal(read_hu(path)[0], hu)


def test_string_forms_of_slope_intercept_and_windows(tmp_path):
    def mutate(ds):
        ds.RescaleIntercept = "-01.024000E+03"
        ds.RescaleSlope = "1.000000"
        ds.WindowCenter = ["00036", "00036"]
        ds.WindowWidth = ["00080", "00080"]

    hu = hu_pattern()
    path = write(tmp_path / "x.dcm", hu, "signed16", mutate=mutate)
    decoded, meta = read_hu(path)
    assert np.array_equal(decoded, hu)
    assert (meta.window_center, meta.window_width) == (36.0, 80.0)
    assert meta.rescale_intercept == -1024.0


def test_padding_minus_2000_reads_as_minus_3024_hu(tmp_path):
    hu = hu_pattern()
    outside = np.zeros(hu.shape, bool)
    outside[-1] = True
    from ichkaggle.synth.dicom_write import ENCODING_BY_NAME, encode_hu

    stored = encode_hu(hu, ENCODING_BY_NAME["signed16"], outside)
    assert (stored[-1] == -2000).all()
    path = write(tmp_path / "x.dcm", hu, "signed16", mutate=lambda ds: setattr(ds, "PixelData", stored.tobytes()))
    assert (read_hu(path)[0][-1] == -3024).all()


def test_identifiers_are_kept_as_written(tmp_path):
    path = write(tmp_path / "ID_0123abcde.dcm", hu_pattern(), "unsigned12")
    meta = read_hu(path)[1]
    assert meta.ID == "ID_0123abcde"
    assert (meta.PatientID, meta.StudyInstanceUID, meta.SeriesInstanceUID) == (
        "ID_0a1b2c3d",
        "ID_00aa11bb22",
        "ID_33cc44dd55",
    )


def test_gantry_tilt_position_is_along_the_slice_normal(tmp_path):
    spacing = 5.0
    positions = [
        read_hu(write(tmp_path / f"{k}.dcm", hu_pattern(8), tilt_degrees=18.5, index=k, slice_spacing=spacing))[1]
        for k in range(3)
    ]
    steps = np.diff([m.position for m in positions])
    assert np.allclose(steps, spacing)
    z_steps = np.diff([m.ipp_z for m in positions])
    assert not np.allclose(z_steps, spacing)  # raw z alone would misjudge the spacing


def test_slice_position_without_orientation_is_z():
    assert slice_position([1, 2, 3], None) == 3.0
    assert np.isnan(slice_position(None, None))


def test_rle_compressed_file_falls_back_to_pydicom(tmp_path):
    hu = hu_pattern()
    path = write(tmp_path / "rle.dcm", hu, "signed16")
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless)
    ds.save_as(tmp_path / "rle2.dcm")
    assert np.array_equal(read_hu(tmp_path / "rle2.dcm")[0], hu)


def test_big_endian_file(tmp_path):
    hu = hu_pattern()
    path = write(tmp_path / "le.dcm", hu, "signed16")
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array.astype(">i2")
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    ds.PixelData = pixels.tobytes()
    pydicom.dcmwrite(tmp_path / "be.dcm", ds, enforce_file_format=True)
    assert np.array_equal(read_hu(tmp_path / "be.dcm")[0], hu)


# ---- failures: each a DicomReadError naming the file and the reason ----


def _failure(path) -> DicomReadError:
    with pytest.raises(DicomReadError) as err:
        read_stored(path)
    assert str(path) in str(err.value)
    assert err.value.kind in FAILURE_KINDS
    return err.value


def test_empty_file(tmp_path):
    path = tmp_path / "empty.dcm"
    path.write_bytes(b"")
    assert _failure(path).kind == "empty"


def test_not_dicom(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("ID,Label\nID_63eb1e259_epidural,0\n" * 20)
    assert _failure(path).kind == "not_dicom"


def test_missing_file(tmp_path):
    assert _failure(tmp_path / "nope.dcm").kind == "not_dicom"


def test_truncated_pixel_data(tmp_path):
    path = write(tmp_path / "x.dcm", hu_pattern(), "signed16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 300])
    err = _failure(path)
    assert err.kind == "truncated" and "bytes" in err.reason


def test_no_pixel_data(tmp_path):
    path = write(tmp_path / "x.dcm", hu_pattern(), "signed16", mutate=lambda ds: delattr(ds, "PixelData"))
    assert _failure(path).kind == "no_pixel_data"


def test_compressed_without_decoder(tmp_path):
    def mutate(ds):
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        ds.PixelData = encapsulate([b"\xff\xd8" + bytes(64) + b"\xff\xd9"])
        ds["PixelData"].VR = "OB"

    path = write(tmp_path / "x.dcm", hu_pattern(), "signed16", mutate=mutate)
    err = _failure(path)
    assert err.kind == "no_decoder" and "JPEG Lossless" in err.reason


@pytest.mark.parametrize(
    "change",
    [
        lambda ds: setattr(ds, "NumberOfFrames", 2),
        lambda ds: (setattr(ds, "SamplesPerPixel", 3), setattr(ds, "PhotometricInterpretation", "RGB")),
    ],
    ids=["two_frames", "rgb"],
)
def test_not_a_single_grey_frame(tmp_path, change):
    path = write(tmp_path / "x.dcm", hu_pattern(), "signed16", mutate=change)
    assert _failure(path).kind == "not_grey_single_frame"


# ---- pydicom's own test files ----


def test_pydicom_ct_small_matches_modality_lut():
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    assert np.array_equal(read_hu(path)[0], apply_modality_lut(ds.pixel_array, ds))


def test_pydicom_mr_truncated_is_a_truncated_failure():
    assert _failure(get_testdata_file("MR_truncated.dcm")).kind == "truncated"


def test_pydicom_rtplan_has_no_pixel_data():
    assert _failure(get_testdata_file("rtplan.dcm")).kind == "no_pixel_data"


def test_pydicom_jpeg2000_decodes_through_pillow():
    from pydicom.pixels.decoders import JPEG2000Decoder

    assert JPEG2000Decoder.is_available  # Pillow (a core dependency) brings OpenJPEG
    path = get_testdata_file("JPEG2000.dcm")
    hu, _ = read_hu(path)
    ds = pydicom.dcmread(path)
    assert np.array_equal(hu, apply_modality_lut(ds.pixel_array, ds).astype(np.float32))


# ---- the real slices in ../shared/real-sample (never committed) ----

real = pytest.mark.skipif(not REAL_SAMPLE.is_dir(), reason="../shared/real-sample is absent")


@real
def test_real_sample_decodes_with_plausible_hu():
    files = sorted(REAL_SAMPLE.glob("*.dcm"))
    assert len(files) == 33
    for path in files:
        hu, meta = read_hu(path)
        inside = hu > -1500  # drop the padding outside the scan circle
        air = hu[inside & (hu < -500)]
        assert abs(np.median(air) - (-1000)) < 50, path.name
        brain = hu[(hu > 0) & (hu < 80)]
        assert 20 <= np.median(brain) <= 45, path.name
        ds = pydicom.dcmread(path)
        assert np.array_equal(hu, apply_modality_lut(ds.pixel_array, ds).astype(np.float32)), path.name


# ---- the fast header parser agrees with pydicom on every file it accepts ----


def _same_read(path):
    from ichkaggle.ct.fast_header import parse_native_file

    fast_px, fast_rescale, fast_meta = read_stored(path, fast=True)
    slow_px, slow_rescale, slow_meta = read_stored(path, fast=False)
    assert np.array_equal(fast_px, slow_px) and fast_px.dtype == slow_px.dtype
    assert fast_rescale == slow_rescale
    fast_row, slow_row = fast_meta.as_row(), slow_meta.as_row()
    assert fast_row.keys() == slow_row.keys()
    for key in fast_row:
        a, b = fast_row[key], slow_row[key]
        assert a == b or (isinstance(a, float) and np.isnan(a) and np.isnan(b)), (key, a, b)
    return parse_native_file(path) is not None


def test_fast_parser_equals_pydicom_on_synthetic_files(synth_dir):
    files = sorted((synth_dir / "stage_2_train").glob("*.dcm"))
    assert all(_same_read(p) for p in files)  # every synthetic file takes the fast path


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_fast_parser_equals_pydicom_on_pydicom_files(name):
    assert _same_read(get_testdata_file(name))  # True: the fast parser took these files


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "MR_small_RLE.dcm"])
def test_compressed_files_leave_the_fast_parser_for_pydicom_decoders(name):
    from ichkaggle.ct.fast_header import parse_native_file

    path = get_testdata_file(name)
    assert parse_native_file(path) is None  # encapsulated pixels: not the fast parser's
    stored, _, _ = read_stored(path)
    reference = pydicom.dcmread(path).pixel_array  # pydicom's decoder, not our code
    assert np.array_equal(stored, reference) and stored.dtype == reference.dtype


@real
def test_fast_parser_equals_pydicom_on_the_real_sample():
    assert all(_same_read(p) for p in sorted(REAL_SAMPLE.glob("*.dcm")))
