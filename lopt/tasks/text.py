"""The offline `python_stdlib` text dataset: the Python standard library.

A language-model task needs real text that every machine has without a
download. The source of the Python standard library is that text: it ships
with every Python, it is several MB (4.7 MB of top-level modules in 3.11),
and it is both code and English (docstrings and comments), written and
reviewed by people, not generated. Its licence is the PSF licence; nothing is
copied into this repository: the builder reads the files of the running
interpreter when it prepares the dataset.

Importing this module registers the tfds builder `PythonStdlib` under the name
"python_stdlib"; `lopt.tasks.data.load_dataset` prepares it into a data_dir
on first use, offline, as `array_record`, and reads it like any prepared tfds
dataset (as one int32 token stream per split, see `lopt.tasks.data`).

What it holds. The top-level `*.py` files of `sysconfig.get_paths()["stdlib"]`
(no subdirectories: packages such as `email/` or `asyncio/` are left out),
read as bytes, so the vocabulary is the 256 byte values and no tokenizer is
involved. Each file goes whole to one split, chosen by a hash of its name:
`zlib.crc32(name.encode()) % 10` is 0 for `test`, 1 for `validation` and
2..9 for `train` (`split_of`). Held-out splits are thus held-out files, never
interleaved bytes of the files the model trains on. A split's files are
concatenated in file-name order, each followed by one b"\\n", and the stream
is cut into examples of `CHUNK_SIZE` bytes (feature `tokens`, uint8 of shape
(CHUNK_SIZE,)); the remainder shorter than a chunk is dropped, so no padding
enters the data. Examples are stored in stream order (`disable_shuffling`).

Python versions. The standard library changes between Python minor versions,
so the builder has one config per minor version, named after the running one
(`CONFIG_NAME`, e.g. "py3.11"; the tfds name is `TFDS_NAME`,
"python_stdlib/py3.11"), and each is prepared in its own folder of the
data_dir: a data_dir prepared under 3.11 is never read as 3.12's, and a 3.12
interpreter prepares its own. Patch releases (3.11.7 vs 3.11.9) and
distributions that patch the stdlib can differ in a few bytes under the same
config; the dataset's description records the exact version prepared.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import zlib
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

# Bytes per stored example; the vocabulary is the byte values.
CHUNK_SIZE = 4096
VOCAB_SIZE = 256

PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
# The builder config of the running interpreter, and the tfds name to load.
CONFIG_NAME = f"py{PYTHON_VERSION}"
TFDS_NAME = f"python_stdlib/{CONFIG_NAME}"

SPLITS = ("train", "validation", "test")


def split_of(file_name: str) -> str:
  """The split a standard-library file belongs to, by a hash of its name.

  Args:
    file_name: the file's base name, e.g. "argparse.py".

  Returns:
    "test" when `zlib.crc32(file_name.encode()) % 10` is 0, "validation"
    when it is 1, else "train": about 10% / 10% / 80% of the files, the same
    on every machine and Python version (crc32 is fixed, unlike `hash`).
  """
  bucket = zlib.crc32(file_name.encode()) % 10
  return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


def stdlib_dir() -> str:
  """The running interpreter's standard-library directory."""
  return sysconfig.get_paths()["stdlib"]


def stdlib_files() -> list[str]:
  """The top-level `*.py` file names of `stdlib_dir()`, sorted.

  Raises:
    FileNotFoundError: the directory has none (an interpreter shipped with
      compiled modules only); the message names the directory.
  """
  directory = stdlib_dir()
  names = sorted(
    entry.name
    for entry in os.scandir(directory)
    if entry.name.endswith(".py") and entry.is_file()
  )
  if not names:
    raise FileNotFoundError(
      f"python_stdlib: no top-level *.py files in the standard-library "
      f"directory {directory!r} (sysconfig.get_paths()['stdlib']); this "
      "interpreter ships no stdlib sources to read."
    )
  return names


def split_stream(split: str) -> bytes:
  """The concatenated bytes of one split's files, before chunking.

  Args:
    split: one of `SPLITS`.

  Returns:
    The split's files (see `split_of`) in file-name order, each followed by
    b"\\n". The stored split is its first `len // CHUNK_SIZE` whole chunks.
  """
  if split not in SPLITS:
    raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}.")
  directory = stdlib_dir()
  parts = []
  for name in stdlib_files():
    if split_of(name) == split:
      with open(os.path.join(directory, name), "rb") as f:
        parts.append(f.read() + b"\n")
  return b"".join(parts)


class PythonStdlib(tfds.core.GeneratorBasedBuilder):
  """The running Python's top-level stdlib modules as chunks of bytes.

  One config per Python minor version, only the running one's is defined
  (see the module docstring). Feature `tokens`: uint8 (CHUNK_SIZE,), a
  chunk of its split's byte stream; splits `train`, `validation` and
  `test` hold disjoint sets of files. Preparing it reads local files only,
  so it needs no network and (for this Tensor feature) no TensorFlow.
  """

  name = "python_stdlib"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {
    "1.0.0": "Top-level stdlib *.py files, split by crc32(name) % 10, "
    f"{CHUNK_SIZE}-byte chunks.",
  }
  BUILDER_CONFIGS: ClassVar[list[tfds.core.BuilderConfig]] = [
    tfds.core.BuilderConfig(
      name=CONFIG_NAME,
      description=f"The standard library of Python {PYTHON_VERSION}.",
    )
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    # Built here rather than from metadata files next to the module (an
    # in-repo builder has none; see digits.py).
    return tfds.core.DatasetInfo(
      builder=self,
      description=(
        "The top-level *.py modules of the Python standard library (code, "
        "docstrings and comments; PSF licence), as bytes in chunks of "
        f"{CHUNK_SIZE}. Prepared from Python {sys.version.split()[0]} "
        f"({stdlib_dir()}). Files are split by zlib.crc32(name) % 10: 0 "
        "test, 1 validation, else train."
      ),
      features=tfds.features.FeaturesDict(
        {
          "tokens": tfds.features.Tensor(shape=(CHUNK_SIZE,), dtype=np.uint8),
        }
      ),
      homepage="https://docs.python.org/3/library/",
      # Store chunks in stream order (tfds otherwise shuffles examples by
      # key hash), so a split read back in order is its byte stream.
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    streams = {split: split_stream(split) for split in SPLITS}
    for split, stream in streams.items():
      if len(stream) < CHUNK_SIZE:
        raise ValueError(
          f"python_stdlib: split {split!r} has {len(stream)} bytes of "
          f"{stdlib_dir()!r}, less than one chunk of {CHUNK_SIZE}."
        )
    return {
      split: self._generate_examples(stream)
      for split, stream in streams.items()
    }

  def _generate_examples(self, stream: bytes):
    tokens = np.frombuffer(stream, np.uint8)
    for i in range(len(tokens) // CHUNK_SIZE):
      yield i, {"tokens": tokens[i * CHUNK_SIZE : (i + 1) * CHUNK_SIZE]}
