"""Driver side: the CLI, configs, the Ray Train launcher, sweeps, the Pareto front, MLflow tracking."""

__version__ = "0.1.0"
