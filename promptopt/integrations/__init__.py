"""Optional bridges to other tools (MLflow tracking, lm-evaluation-harness). Each lives in its own module,
imports its tool only when used, and is installed with its extra (`pip install 'promptopt[mlflow]'`,
`'promptopt[lmeval]'`)."""
