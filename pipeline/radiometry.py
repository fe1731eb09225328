"""Source values <-> the model's [0, 1], and fused [0, 1] -> the output dtype.

Each source gets a linear stretch (lo -> 0, hi -> 1, clipped): the dtype's range, a fixed range,
or percentiles of the valid pixels of a decimated read. The stretch is recorded per item so that
every block of the item, on any worker and after any resume, uses the same one.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from pipeline import kernels
from pipeline.spec import NormaliseSpec

INTEGER_RANGES = {
    np.dtype("uint8"): (0, 255),
    np.dtype("uint16"): (0, 65535),
    np.dtype("int16"): (-32768, 32767),
    np.dtype("uint32"): (0, 2**32 - 1),
    np.dtype("int32"): (-(2**31), 2**31 - 1),
    np.dtype("int8"): (-128, 127),
}


@dataclass(frozen=True)
class Stretch:
    method: str  # the resolved method: dtype | fixed | percentile
    lo: tuple[float, ...]  # one per channel (or one for all)
    hi: tuple[float, ...]
    details: dict = field(default_factory=dict)  # percentiles, decimation, valid fraction

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Stretch":
        return cls(data["method"], tuple(data["lo"]), tuple(data["hi"]), dict(data.get("details", {})))


def resolve_method(spec: NormaliseSpec, dtype: np.dtype) -> str:
    if spec.method != "auto":
        return spec.method
    return "dtype" if np.dtype(dtype) == np.uint8 else "percentile"


def compute_stretch(
    sample: np.ndarray, valid: np.ndarray, spec: NormaliseSpec, dtype: np.dtype, *, decimation: int = 1
) -> Stretch:
    """sample: (C, h, w) raw values of a (decimated) read; valid: (h, w). Raises ValueError when
    the sample has no valid pixel (an all-nodata source)."""
    dtype = np.dtype(dtype)
    method = resolve_method(spec, dtype)
    channels = sample.shape[0]
    fraction = float(valid.mean()) if valid.size else 0.0
    details = {"valid_fraction": round(fraction, 6), "decimation": decimation}
    if method == "dtype":
        if dtype not in INTEGER_RANGES:
            raise ValueError(f"normalise method 'dtype' needs integer data, got {dtype}: use fixed or percentile")
        lo, hi = INTEGER_RANGES[dtype]
        return Stretch(method, (float(lo),), (float(hi),), details)
    if method == "fixed":
        return Stretch(method, (float(spec.min),), (float(spec.max),), details)
    values = sample[:, valid].astype(np.float64)
    values = values[:, np.isfinite(values).all(axis=0)]
    if values.shape[1] == 0:
        raise ValueError("no valid pixel (every pixel is nodata on the reference grid)")
    if spec.per_band:
        bounds = np.percentile(values, [spec.low, spec.high], axis=1)  # (2, C)
        lo, hi = bounds[0], bounds[1]
    else:
        lo_all, hi_all = np.percentile(values, [spec.low, spec.high])
        lo, hi = np.full(channels, lo_all), np.full(channels, hi_all)
    if dtype.kind in "iu":  # integer data: whole values keep the integer round trip exact
        lo, hi = np.floor(lo), np.ceil(hi)
    hi = np.where(hi > lo, hi, lo + (1.0 if dtype.kind in "iu" else max(1e-6, float(np.abs(lo).max()) * 1e-6)))
    details.update(low_percentile=spec.low, high_percentile=spec.high, per_band=spec.per_band)
    if not spec.per_band:
        lo, hi = lo[:1], hi[:1]
    return Stretch(method, tuple(float(v) for v in lo), tuple(float(v) for v in hi), details)


def _bounds(stretch: Stretch, channels: int) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = np.asarray(stretch.lo, np.float64), np.asarray(stretch.hi, np.float64)
    if lo.size == 1:
        lo, hi = np.repeat(lo, channels), np.repeat(hi, channels)
    if lo.size != channels:
        raise ValueError(f"stretch has {lo.size} bands, data has {channels}")
    return lo, hi


def normalise(raw: np.ndarray, stretch: Stretch) -> np.ndarray:
    """(C, h, w) raw -> (h, w, C) float32 in [0, 1]. NaNs become 0 (they are invalid anyway)."""
    lo, hi = _bounds(stretch, raw.shape[0])
    x = raw.transpose(1, 2, 0).astype(np.float32)
    x -= lo.astype(np.float32)
    x /= (hi - lo).astype(np.float32)
    np.maximum(x, 0.0, out=x)  # maximum/minimum: much faster than np.clip on large float arrays
    np.minimum(x, 1.0, out=x)
    if raw.dtype.kind == "f":
        np.nan_to_num(x, copy=False, nan=0.0)
    return x


def output_dtype(requested: str, reference_dtype: np.dtype) -> np.dtype:
    if requested != "auto":
        return np.dtype(requested)
    ref = np.dtype(reference_dtype)
    return ref if ref in (np.dtype("uint8"), np.dtype("uint16"), np.dtype("int16"), np.dtype("float32")) else np.dtype("float32")


def default_nodata(dtype: np.dtype) -> float:
    dtype = np.dtype(dtype)
    return float("nan") if dtype.kind == "f" else float(INTEGER_RANGES[dtype][0])


def to_output(
    values: np.ndarray, valid: np.ndarray, reference: Stretch, dtype: np.dtype, scale: str, nodata: float | None
) -> np.ndarray:
    """Fused (h, w, C) in [0, 1] -> (C, h, w) in the output dtype.

    scale 'reference' inverts the reference source's stretch (a source-A output gives back source A);
    'full' maps [0, 1] onto the dtype's whole range ([0, 1] for floats). Invalid pixels get nodata;
    a valid pixel that would equal nodata is moved one step away so it stays valid.
    """
    dtype = np.dtype(dtype)
    channels = values.shape[-1]
    if scale == "reference":
        lo, hi = _bounds(reference, channels)
    elif dtype.kind == "f":
        lo, hi = np.zeros(channels), np.ones(channels)
    else:
        lo, hi = (np.full(channels, float(v)) for v in INTEGER_RANGES[dtype])
    if dtype.kind in "iu" and float(np.max(hi - lo)) <= 65536:
        return _to_integer_compiled(values, valid, lo, hi, dtype, nodata)
    return _to_output_numpy(values, valid, lo, hi, dtype, nodata)


def _to_integer_compiled(values, valid, lo, hi, dtype: np.dtype, nodata: float | None) -> np.ndarray:
    """The common case (integer output, span <= 16 bits) in one compiled pass: the arithmetic of
    `_to_output_numpy` in float32."""
    lo_d, hi_d = INTEGER_RANGES[dtype]
    out = np.empty((values.shape[-1], *values.shape[:2]), dtype)
    has_nodata = nodata is not None
    kernels.scale_to_integer(
        np.ascontiguousarray(values, np.float32), np.ascontiguousarray(valid, bool),
        (hi - lo).astype(np.float32), lo.astype(np.float32), out, float(lo_d), float(hi_d),
        float(nodata) if has_nodata else 0.0, has_nodata, 1 if has_nodata and nodata < hi_d else -1,
    )
    return out


def _to_output_numpy(values, valid, lo, hi, dtype: np.dtype, nodata: float | None) -> np.ndarray:
    # float32 arithmetic is exact enough to give integers back when the span is at most 16 bits
    # (the error stays far below 0.5); wider spans are computed in float64
    work = np.float32 if float(np.max(hi - lo)) <= 65536 else np.float64
    v = values.astype(work)  # (h, w, C): channels last, so lo/hi broadcast without transposes
    v *= (hi - lo).astype(work)
    v += lo.astype(work)
    if dtype.kind in "iu":
        lo_d, hi_d = INTEGER_RANGES[dtype]
        np.rint(v, out=v)
        np.maximum(v, lo_d, out=v)
        np.minimum(v, hi_d, out=v)
    out = v.astype(dtype).transpose(2, 0, 1)
    if nodata is not None:
        if dtype.kind in "iu":
            lo_d, hi_d = INTEGER_RANGES[dtype]
            step = 1 if nodata < hi_d else -1
            clash = (out == nodata) & valid[None]
            out[clash] = np.asarray(nodata + step).astype(dtype)
        elif not np.isnan(nodata):
            clash = (out == dtype.type(nodata)) & valid[None]
            out[clash] = np.nextafter(dtype.type(nodata), dtype.type(np.inf))
        out[:, ~valid] = dtype.type(nodata)
    return np.ascontiguousarray(out)
