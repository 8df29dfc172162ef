"""Research on a market beside the lifecycle: what the features are worth (`ablation`). Above `evaluation` and
`promotion` (it reads both), below the Dagster shell."""
