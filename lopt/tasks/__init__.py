"""Inner tasks: the models a learned optimizer trains, their data, and how.

`models` defines the inner models and losses (`Task`), `data` loads their
datasets whole onto devices (tfds, with the offline `digits` builder of
`digits`), `inner` trains a model with a learned optimizer as an
`lopt.systems.UnrolledSystem` (what the estimators meta-train through), and
`family` meta-trains several tasks as groups of one theta.
"""

from lopt.tasks.models import MODELS, Task, make_task

__all__ = ["MODELS", "Task", "make_task"]
