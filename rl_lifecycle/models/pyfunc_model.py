"""The models-from-code file of every logged policy model (`rl_lifecycle.models.pyfunc.log_policy_model`):
MLflow copies it into the model and runs it on load; the policy files come in as the `policy` artifact."""

from mlflow.models import set_model

from rl_lifecycle.models.pyfunc import PolicyModel

set_model(PolicyModel())
