"""Packaging beyond what pyproject.toml can say: the repository's ``conf/``, ``data/demo/`` and ``assets/`` folders
ship inside the package as ``promptbench/conf``, ``promptbench/demo_data`` and ``promptbench/assets`` (they stay
where they are in the source tree). ``promptbench.config`` finds them through ``importlib.resources`` in an
installed wheel and beside the package in a source checkout."""

from setuptools import find_namespace_packages, setup

#: package name in the wheel -> folder in the source tree
SHIPPED = {"promptbench.conf": "conf", "promptbench.demo_data": "data/demo", "promptbench.assets": "assets"}

setup(
    # namespace packages too (promptbench/engine has no __init__.py), as pyproject's packages.find did
    # hydra_plugins.promptbench_sweeper: Hydra loads sweepers only from that namespace (promptbench.sweep.launchers)
    packages=[*find_namespace_packages(include=["promptbench", "promptbench.*", "hydra_plugins.promptbench_sweeper"],
                                       exclude=["*.__pycache__"]),
              *SHIPPED],
    package_dir=SHIPPED,
    package_data={
        "promptbench": ["py.typed", "resources/**/*.json", "resources/**/*.md", "backbones/model_configs/**/*"],
        **{name: ["**/*"] for name in SHIPPED},
    },
    # a user's machine-specific settings (git-ignored) never ship
    exclude_package_data={"promptbench.conf": ["local/*.yaml"]},
    include_package_data=False,
)
