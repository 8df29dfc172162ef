"""Feature sets (YAML contracts over TA-Lib) and the pure pipeline that applies the canonical feature rule.

`spec` validates a feature set and fingerprints it, `pipeline` computes feature frames,
`checks` holds the pure helpers behind the determinism and lookahead asset checks.
"""
