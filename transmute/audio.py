"""Audio file I/O shared by every plugin: read any format soundfile reads, resample, trim.

One reader for the whole project, so a stage and a trainer see the same samples
from the same file.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

from transmute.errors import InputError, InputWarning
from transmute.files import check_readable

RESAMPLERS = ("soxr_vhq", "soxr_hq", "soxr_mq", "soxr_lq")
_EXTRA_EXTENSIONS = {"aif", "aiff", "aifc", "oga", "opus", "mp3", "wave", "htk", "sd2", "w64", "rf64", "caf"}


@functools.lru_cache(maxsize=1)
def audio_extensions() -> frozenset[str]:
    """File suffixes (no dot) that read_audio can read: soundfile's formats, asked on first use."""
    try:
        import soundfile

        found = {name.lower() for name in soundfile.available_formats()}
    except Exception:  # soundfile missing its library: reading will say so per file
        found = {"wav", "flac", "ogg"}
    return frozenset(found | _EXTRA_EXTENSIONS)


def is_audio_file(path: Path) -> bool:
    return Path(path).suffix.lower().lstrip(".") in audio_extensions()


def resample(audio, orig_sr: int, target_sr: int, quality: str = "soxr_hq"):
    """(samples, channels) float32 numpy -> resampled with soxr, at least one sample long."""
    import numpy as np
    import soxr

    if orig_sr == target_sr:
        return audio
    out = soxr.resample(audio, orig_sr, target_sr, quality=quality.removeprefix("soxr_").upper())
    if out.shape[0] == 0:
        out = np.zeros((1, audio.shape[1]), dtype=audio.dtype)
    return np.ascontiguousarray(out, dtype=np.float32)


def read_audio(path: Path, sample_rate: int = 0, channel: str = "mono", resampler: str = "soxr_hq",
               remove_dc: bool = True):
    """Read a file as float32 numpy (samples, channels) and its rate.

    channel: 'mono' mixes down, 'all' keeps every channel, or a channel index as
    a string. sample_rate 0 keeps the file's rate. remove_dc subtracts each
    channel's mean. Problems raise InputError with a one-line reason (the caller
    names the file); a file that is processed but damaged (cut short) raises
    InputWarning.
    """
    import numpy as np
    import soundfile

    check_readable(path)
    if Path(path).stat().st_size == 0:
        raise InputError("the file is empty")
    try:
        audio, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:
        reason = getattr(exc, "error_string", None) or " ".join(str(exc).replace(str(path), "").split())
        raise InputError(f"not a readable audio file ({reason.strip(' :')})") from None
    if audio.shape[0] == 0:
        raise InputError("the file contains no audio samples")
    if not np.isfinite(audio).all():
        raise InputError("the file contains NaN or infinite samples")
    promised = _promised_wav_frames(path)
    if promised is not None and promised > audio.shape[0]:
        missing = promised - audio.shape[0]
        warnings.warn(f"the file is cut short: its header promises {promised} frames ({promised / rate:.2f} s), "
                      f"it holds {audio.shape[0]}; {missing} frames ({missing / rate:.2f} s) are missing, "
                      "what is there was used", InputWarning, stacklevel=2)
    if channel == "mono":
        audio = audio.mean(axis=1, keepdims=True)
    elif channel != "all":
        index = int(channel)
        if index >= audio.shape[1]:
            raise InputError(f"channel {index} requested, but the file has {audio.shape[1]} channel(s)")
        audio = audio[:, index : index + 1]
    if remove_dc:
        # The mean, not a high-pass filter: it removes a constant offset exactly and
        # touches nothing else (no cutoff to choose, no phase shift, no start-up
        # transient), and an offset is what recorders and converters leave behind.
        audio = audio - audio.mean(axis=0, dtype=np.float64).astype(np.float32)
    if sample_rate and rate != sample_rate:
        audio = resample(audio, rate, sample_rate, resampler)
        rate = sample_rate
    return np.ascontiguousarray(audio), rate


# WAV encodings that store one frame per block_align bytes: PCM, float, A-law, mu-law, extensible.
_FRAME_PER_BLOCK = (1, 3, 6, 7, 0xFFFE)
# Sizes a streaming writer puts in the data chunk when it cannot know the length.
_UNKNOWN_DATA_SIZES = (0, 0xFFFFFFFF)


def _promised_wav_frames(path: Path) -> int | None:
    """The frame count a WAV header's data chunk declares; None for other formats or an unknown length.

    libsndfile silently clamps a declared length to what the file holds, so the
    header is read here to tell a complete file from one cut short.
    """
    import struct

    with open(path, "rb") as f:
        riff = f.read(12)
        if len(riff) < 12 or riff[:4] not in (b"RIFF", b"RIFX") or riff[8:] != b"WAVE":
            return None
        endian = "<" if riff[:4] == b"RIFF" else ">"
        block_align = 0
        while True:
            header = f.read(8)
            if len(header) < 8:
                return None
            chunk, size = header[:4], struct.unpack(endian + "I", header[4:])[0]
            if chunk == b"fmt ":
                fmt = f.read(size)
                if len(fmt) < 14:
                    return None
                encoding = struct.unpack(endian + "H", fmt[:2])[0]
                block_align = struct.unpack(endian + "H", fmt[12:14])[0]
                if encoding not in _FRAME_PER_BLOCK:
                    return None  # a compressed encoding (ADPCM, GSM, ...): a block holds many frames
                f.seek(size & 1, 1)
            elif chunk == b"data":
                if not block_align or size in _UNKNOWN_DATA_SIZES:
                    return None
                return size // block_align
            else:
                f.seek(size + (size & 1), 1)


def trim_silence(audio, top_db: float = 40.0, frame_length: int = 1024, hop_length: int = 256):
    """Drop leading and trailing audio quieter than top_db below the peak; (samples, channels).

    librosa.effects.trim's rule -- centred frames, the loudest channel's RMS in
    dB against the loudest frame's -- in plain numpy: librosa's compiles numba
    code on its first call, 4 s before a training run could start.
    """
    import numpy as np

    pad = frame_length // 2
    energy = np.pad(np.asarray(audio, dtype=np.float64) ** 2, ((pad, pad), (0, 0)))
    total = np.concatenate([np.zeros((1, energy.shape[1])), np.cumsum(energy, axis=0)])
    starts = np.arange(0, len(energy) - frame_length + 1, hop_length)
    power = ((total[starts + frame_length] - total[starts]) / frame_length).max(axis=1)
    floor = 1e-10  # librosa's amin, squared
    db = 10 * np.log10(np.maximum(power, floor))
    loud = np.flatnonzero(db > 10 * np.log10(max(float(power.max(initial=0.0)), floor)) - top_db)
    if not loud.size:
        return audio
    start, end = loud[0] * hop_length, min(len(audio), (loud[-1] + 1) * hop_length)
    return audio[start:end] if end > start else audio


def read_audio_folders(folders, sample_rate: int) -> tuple[dict, list[str]]:
    """{'FOLDER/relative path': mono float32 samples at sample_rate} of every readable audio file under the
    folders (a trainer's items, named as --sample-weights names them), and one line per file left out.

    A folder without audio files is a TransmuteError; an unreadable file is left out and reported.
    """
    from transmute.errors import TransmuteError
    from transmute.files import discover

    audio, skipped = {}, []
    for folder in folders:
        files, _, problems = discover([str(folder)], is_audio_file)
        skipped += [f"{path}: {reason}" for path, reason in problems]
        if not files:
            raise TransmuteError(f"{folder}: no audio files found")
        for f in files:
            try:
                samples, _ = read_audio(f.path, sample_rate)
            except TransmuteError as exc:
                skipped.append(f"{f.path}: {exc}")
                continue
            if samples.shape[0]:
                audio[f"{Path(folder).name}/{f.relative.as_posix()}"] = samples[:, 0].copy()
    return audio, skipped

