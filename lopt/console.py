"""What a person sees on the console: lopt's own lines, short and timed.

Every entry point calls `setup()` first. By default the console shows
lopt's INFO lines (progress, evaluations, where the outputs went) as
`HH:MM:SS message`, and from every other library (orbax, jax, absl, tfds)
only warnings and errors: orbax alone logs dozens of INFO lines per
checkpoint through absl, indistinguishable by logger name, so the filter
keys on the source file of each record. `--verbosity=1` (absl's own flag)
shows everything in absl's full format, and `--verbosity=-1` silences lopt's
INFO lines too.

TensorFlow's C++ notices (oneDNN, CPU features) are printed when it is
imported, before any Python logging; `import lopt` sets
`TF_CPP_MIN_LOG_LEVEL` so that they stay off unless the environment asks
for them.
"""

from __future__ import annotations

import logging as py_logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from absl import app, flags, logging

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


#: Other libraries' warnings that say nothing is wrong, as (source file
#: suffix, message prefix): orbax warns whenever a manager opens a directory
#: read-only, which is how `lopt.export` and `lopt.evaluate` read every
#: checkpoint.
_NOTICES = (
  ("orbax/checkpoint/checkpoint_manager.py", "Given directory is read only"),
)


class _OwnInfoOnly(py_logging.Filter):
  """Passes lopt's records, and other libraries' warnings and errors."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    path = os.path.abspath(record.pathname)
    if path.startswith(_PACKAGE_DIR):
      return True
    if record.levelno < py_logging.WARNING:
      return False
    message = str(record.msg)
    return not any(
      path.endswith(suffix) and message.startswith(prefix)
      for suffix, prefix in _NOTICES
    )


class _ShortFormatter(py_logging.Formatter):
  """`HH:MM:SS message`; warnings and errors say so."""

  def format(self, record: py_logging.LogRecord) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
    message = record.getMessage()
    if record.levelno >= py_logging.WARNING:
      message = f"{record.levelname}: {message}"
    if record.exc_info:
      message += "\n" + self.formatException(record.exc_info)
    return f"{stamp} {message}"


def setup() -> None:
  """Configures logging for a person at a console; call after flag parsing.

  With `--verbosity` given on the command line, absl's own behaviour is
  left alone (every library's INFO lines, absl's format).
  """
  if flags.FLAGS.is_parsed() and flags.FLAGS["verbosity"].present:
    return
  logging.set_verbosity(logging.INFO)
  handler = logging.get_absl_handler()
  handler.setFormatter(_ShortFormatter())
  if not any(isinstance(f, _OwnInfoOnly) for f in handler.filters):
    handler.addFilter(_OwnInfoOnly())
  # Libraries that log through Python's logging directly, not through absl.
  for name in ("jax", "orbax", "tensorflow", "absl.flags"):
    py_logging.getLogger(name).setLevel(py_logging.WARNING)


def duration(seconds: float) -> str:
  """`42s`, `3m05s` or `2h04m`: a duration at the precision a person reads."""
  if not seconds >= 0 or seconds == float("inf"):
    return "?"
  seconds = round(seconds)
  if seconds < 60:
    return f"{seconds}s"
  minutes, seconds = divmod(seconds, 60)
  if minutes < 60:
    return f"{minutes}m{seconds:02d}s"
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h{minutes:02d}m"


class Progress:
  """Progress over a sweep of `total` items: `[3/12] label (ETA 1m20s)`.

  Logs the first item and then about `max_lines` evenly spaced ones in all
  (each with the ETA from the items done so far), so a long sweep stays a
  few lines on the console.
  """

  def __init__(self, total: int, what: str = "", max_lines: int = 8):
    self.total = total
    self.what = what
    self.done = 0
    self._every = max(1, -(-total // max_lines))  # ceil
    self._start = time.perf_counter()

  def step(self, label: str) -> None:
    """Notes that item `done + 1` starts; logs it if it is due."""
    eta = ""
    if self.done:
      per_item = (time.perf_counter() - self._start) / self.done
      eta = f" (ETA {duration(per_item * (self.total - self.done))})"
    self.done += 1
    if self.done == 1 or self.done % self._every == 0:
      prefix = f"{self.what} " if self.what else ""
      logging.info("%s[%d/%d] %s%s", prefix, self.done, self.total, label, eta)


def run_program(
  main: Callable[[dict[str, Any]], Any],
  define_flags: Callable[[], Mapping[str, flags.FlagHolder]],
  required: Sequence[str] = (),
) -> None:
  """Runs an entry point: flags, console set-up, clear errors for a person.

  A bad config value, a missing checkpoint and a corrupted one end the
  program with one line that names what is wrong (exit status 1), not a
  traceback; with `--verbosity` given, the traceback is shown too.

  Every lopt entry point defines its flags in a `define_flags()` that only
  its `if __name__ == "__main__":` block calls, so importing several entry
  points into one process (tests, notebooks) defines no flag twice.

  Args:
    main: called with the flag values by name, after `setup()`.
    define_flags: defines the program's flags, returns their holders.
    required: flags that must be given.
  """
  holders = define_flags()
  flags.mark_flags_as_required(list(required))

  def run(argv):
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    setup()
    # Imported here: the console itself must not pull in the training stack.
    from lopt.checkpoint.digests import CorruptCheckpointError
    from lopt.validation import ConfigError

    try:
      main({name: holder.value for name, holder in holders.items()})
    except (ConfigError, CorruptCheckpointError, FileNotFoundError) as e:
      if flags.FLAGS["verbosity"].present:
        raise
      # One line a person can act on; the traceback would only bury it.
      kind = "Config error" if isinstance(e, ConfigError) else "Error"
      sys.exit(f"{kind}: {e}")

  app.run(run)
