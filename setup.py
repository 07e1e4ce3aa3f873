"""Maps the source folders to their import names.

operator/ must not be importable as `operator` (it would shadow the standard
library), so both folders are installed under distinct package names; find_packages
cannot rename, hence this small file next to pyproject.toml.
"""

from setuptools import find_packages, setup

FOLDERS = {"grpo_operator": "operator", "grpo_trainer": "trainer"}


def _packages(name: str, folder: str) -> list[str]:
    return [name] + [f"{name}.{sub}" for sub in find_packages(folder)]


setup(
    packages=[pkg for name, folder in FOLDERS.items() for pkg in _packages(name, folder)],
    package_dir=FOLDERS,
)
