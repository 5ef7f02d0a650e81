"""What a run reports while it runs: the metrics log, progress bars and MLflow (logger=mlflow).

metrics_log.py  metrics.jsonl, the optional TensorBoard writer, and the rows passed on to MLflow
progress.py     the progress bars (progress=false turns them off; the per-epoch lines print regardless)
mlflow_run.py   the run's MLflow run, which never fails the run
"""
