"""Many cells: the grid, cell status, claims, the inputs check, launchers, the driver, GPU pinning, progress.

Modules are imported by name (``promptbench.sweep.driver``...); this package imports nothing itself, so the Hydra
plugin and status checks stay light."""
