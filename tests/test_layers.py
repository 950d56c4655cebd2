"""The layering as import-linter contracts (pyproject.toml, [tool.importlinter]): the study
imports the knobs and objectives, they import the grasp domain, and nothing imports back
up; the robot-side timing agent imports neither torch, MLflow, Optuna nor the study."""

from pathlib import Path


def test_the_import_contracts_hold():
    from importlinter.cli import lint_imports

    root = Path(__file__).resolve().parents[1]
    assert lint_imports(config_filename=str(root / "pyproject.toml"), no_cache=True) == 0
