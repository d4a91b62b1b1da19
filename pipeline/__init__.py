"""The pipeline: the jobs that chain the packages' stages (index, core predictions, specialists, fusion,
merge), fitting the second level, the submission, ``etalage ocr`` and the demo. The only layer that
drives others; the CLI calls one function here (or in a package) per command.
"""

from etalage.pipeline.workdir import WorkDir

__all__ = ["WorkDir"]
