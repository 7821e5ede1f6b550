"""The parts of ``kubefal run``: config, plan and supervision (see kubefal_cli/commands/run.py)."""
