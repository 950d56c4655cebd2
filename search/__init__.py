"""Orchestration: study configuration, the Optuna study, MLflow tracking, Pareto, CLI."""
