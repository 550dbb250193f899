"""Bad dataset files: one error type, and a scan of whole splits before a run (``dataset.check=true``).

Every sample is checked when it is loaded (label values against the file's format, image and mask
sizes, unreadable or truncated files), so a bad file stops training when it is first drawn -- which
may be hours into a run, and then names only that one file. ``check_dataset`` loads every sample of
the splits up front instead and lists every bad file in one error.
"""

from __future__ import annotations


import numpy as np
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..io import atomic_write

# How many bad files an error lists before pointing at the full report.
SHOWN = 50


class DatasetError(ValueError):
    """A dataset file that cannot be used, named with what was expected.

    Raised in a DataLoader worker, torch re-raises it in the main process by calling this class with
    its own wrapper text ("Caught DatasetError in DataLoader worker process 0. Original Traceback ..."
    and the worker's stack). The constructor keeps only the original message, so what the user reads
    is the paragraph that names the file, not a stack trace from inside a worker.
    """

    def __init__(self, message: str = ""):
        marker = f"\n{type(self).__module__}.{type(self).__qualname__}: "
        if isinstance(message, str) and message.startswith("Caught ") and "\nOriginal Traceback" in message \
                and marker in message:
            message = message[message.rindex(marker) + len(marker):].rstrip("\n")
        super().__init__(message)


def value_ranges(values) -> str:
    """``[0, 1, 2, 3, 255]`` -> ``"0-3, 255"``: the valid label values of a format, short enough to read."""
    values = sorted(int(v) for v in values)
    parts, start = [], None
    for i, v in enumerate(values):
        start = v if start is None else start
        if i + 1 == len(values) or values[i + 1] != v + 1:
            parts.append(str(v) if v == start else f"{start}-{v}")
            start = None
    return ", ".join(parts)


def missing_masks(pairs: list[tuple[str, str]], layout: str) -> FileNotFoundError:
    """The error for images without their mask: every one of them (the first ``SHOWN``), then the layout."""
    lines = [f"{image}: no mask {mask}" for image, mask in pairs[:SHOWN]]
    if len(pairs) > SHOWN:
        lines.append(f"... and {len(pairs) - SHOWN} more")
    head = lines[0] if len(pairs) == 1 else f"{len(pairs)} images have no mask:\n  " + "\n  ".join(lines)
    return FileNotFoundError(f"{head}\nexpected the layout:\n{layout}")


def jpeg_is_complete(data: bytes) -> bool:
    """False for a JPEG cut short (an interrupted copy or download).

    OpenCV decodes such a file without an error -- libjpeg only prints "Premature end of JPEG file"
    and fills the missing rows with grey -- so the cut is found here: the end-of-image marker must
    follow the first scan. The header segments are skipped by their lengths, since an EXIF thumbnail
    carries markers of its own; data appended after the end marker (some cameras do) is fine.
    """
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:  # start of scan: entropy-coded data never contains FF D9 before the end
            return data.find(b"\xff\xd9", pos + 2) != -1
        if marker == 0xD9:
            return False  # ends before any image data
        if 0xD0 <= marker <= 0xD8 or marker == 0x01:  # markers without a length
            pos += 2
            continue
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return False


class _Probe(Dataset):
    """``dataset.load(i)`` turned into a message: "" for a good sample, what is wrong otherwise."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i: int) -> str:
        try:
            self.dataset.load(i)
        except (DatasetError, OSError) as e:  # our messages name the file already
            return str(e)
        except Exception as e:  # anything else (a decoder's own error) is a finding too, not a crash
            return f"{self.dataset.images[i]}: {type(e).__name__}: {e}"
        return ""


def scan(dataset, workers: int = 0, progress: bool = False, desc: str = "check") -> list[str]:
    """Load every sample of ``dataset`` (image, mask, label values); one message per bad sample."""
    loader = DataLoader(_Probe(dataset), batch_size=None, num_workers=workers)
    return [m for m in tqdm(loader, total=len(dataset), desc=desc, disable=not progress, dynamic_ncols=True) if m]


def check_dataset(splits: dict, workers: int = 0, progress: bool = False, report: str | None = None) -> int:
    """Scan ``splits`` (name -> dataset) and raise one ``DatasetError`` listing every bad file.

    The error shows the first ``SHOWN``; when there are more and ``report`` is given, all of them are
    written there (one per line). Returns how many samples were checked.
    """
    problems = []
    for name, dataset in splits.items():
        problems += [f"[{name}] {m}" for m in scan(dataset, workers, progress, desc=f"check {name}")]
    total = sum(len(d) for d in splits.values())
    if not problems:
        return total
    lines = problems[:SHOWN]
    if len(problems) > SHOWN:
        more = f"... and {len(problems) - SHOWN} more"
        if report:
            with atomic_write(report, "w") as f:
                f.write("\n".join(problems) + "\n")
            more += f" (all of them in {report})"
        lines.append(more)
    raise DatasetError(
        f"dataset.check: {len(problems)} of {total} samples ({', '.join(splits)}) cannot be used:\n  "
        + "\n  ".join(lines)
        + "\nFix or remove these files and start again (dataset.check=false skips this scan; each sample is "
          "still checked when it is loaded).")


def valid_values(lut: np.ndarray) -> str:
    """The file values a lookup table accepts, as ranges."""
    return value_ranges(np.flatnonzero(lut >= 0))


def class_pixels(splits: dict) -> str:
    """``dataset.check``'s second part: labelled pixels per class in each split (count and share), then
    the classes a split never shows, by name. A class never seen in training cannot be learnt, and one
    never seen in validation has no IoU (NaN, left out of the mIoU): both are easy to miss in a mean."""
    names = list(next(iter(splits.values())).classes)
    counts = {split: dataset.class_pixel_counts() for split, dataset in splits.items() if dataset.has_masks}
    width = max(12, *(len(n) for n in names))
    lines = [f"{'class':<{width}}" + "".join(f" {split + ' pixels':>23}" for split in counts)]
    for k, name in enumerate(names):
        cells = [f"{int(c[k]):>13,} ({100 * c[k] / max(c.sum(), 1):5.1f} %)" for c in counts.values()]
        lines.append(f"{name:<{width}} " + " ".join(cells))
    for split, c in counts.items():
        never = [n for n, v in zip(names, c) if v == 0]
        if never:
            lines.append(f"never seen in {split}: {', '.join(never)} ({len(never)} of {len(names)} classes)")
        else:
            lines.append(f"every class is seen in {split}")
    return "\n".join(lines)
