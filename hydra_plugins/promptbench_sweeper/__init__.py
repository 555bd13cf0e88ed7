"""promptbench's Hydra sweeper (``conf/hydra/sweeper/checked.yaml``) and joblib launcher
(``conf/hydra/launcher/joblib.yaml``). Hydra loads plugins only from the ``hydra_plugins`` namespace, hence this
package; :func:`promptbench.sweep.launchers.register_plugins` also registers them by hand, because Hydra's plugin scan
does not see an editable install's copy."""

from __future__ import annotations

from collections.abc import Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.utils import JobReturn
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
from omegaconf import DictConfig

from promptbench.config.resolvers import grid_is_checked
from promptbench.sweep.launchers import GridConfigLoader, launch_joblib

__all__ = ["CheckedGridSweeper", "ResilientJoblibLauncher"]


class CheckedGridSweeper(BasicSweeper):
    """Hydra's basic sweeper, for a grid promptbench has composed and type-checked already (``promptbench sweep``,
    ``train -m``; see :func:`promptbench.config.resolvers.grid_checked`): the driver does not compose every job of a
    batch again before launching it (~0.14 s a cell on one core, which kept the workers idle at each batch boundary),
    and the launcher's workers compose each distinct set of config-group choices once
    (:class:`promptbench.sweep.launchers.GridConfigLoader`). Otherwise Hydra's sweeper unchanged."""

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        if grid_is_checked():
            hydra_context = HydraContext(config_loader=GridConfigLoader(hydra_context.config_loader),
                                         callbacks=hydra_context.callbacks)
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        if not grid_is_checked():
            super().validate_batch_is_legal(batch)


class ResilientJoblibLauncher(JoblibLauncher):
    """hydra-joblib-launcher with the same settings and worker processes (loky), where a worker that dies mid-cell
    (SIGKILL, the OOM killer) fails only its own cell, recorded by the driver, and the sweep goes on with a new
    worker (:func:`promptbench.sweep.launchers.launch_joblib`). The plugin's own launcher aborts the whole sweep and its
    shared pool kills the other workers, whose cells are left unrecorded."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        return launch_joblib(self, job_overrides, initial_job_idx)
