"""``visalign compare`` / ``visalign demo``: the comparison grid over the library's API.

:func:`run_compare` runs (or resumes) a grid described by a :class:`CompareConfig`;
:func:`demo_config` is the README's main job on the micro-world.
"""

from visalign.compare.analysis import chair_vs_base, chair_vs_length_matched
from visalign.compare.config import (DPO_METHODS, METHOD_TASKS, METHODS, PACKAGED,
                                     CompareConfig, check_alignment_sizes, check_config,
                                     demo_config,
                                     grid_dirs)
from visalign.compare.grid import run_compare
from visalign.compare.methods import (CALIBRATION_FIGURES, alignment_image_ids, trainer_config,
                                      write_alignment_data)

__all__ = ["CALIBRATION_FIGURES", "DPO_METHODS", "METHODS", "METHOD_TASKS", "PACKAGED",
           "CompareConfig", "alignment_image_ids", "chair_vs_base", "chair_vs_length_matched",
           "check_alignment_sizes", "check_config", "demo_config", "grid_dirs", "run_compare", "trainer_config",
           "write_alignment_data"]
