"""Paper decisions: the champion acts on the newest closed bar's canonical vector, or holds with every reason.

Functional core (no Dagster): `config` (thresholds), `safety` (pure hold rules: OOD, missing critical
features, staleness in the market's calendar), `store` (the append-only `rl_decisions` table) and
`service.decide` (the use case the CLI, the `paper_decisions` schedule and the benchmark call).
Paper only: nothing here routes orders.
"""
