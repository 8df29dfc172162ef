"""`python -m rl_lifecycle.cli`: the same as `rl-lifecycle`."""

from rl_lifecycle.cli.main import main

main()
