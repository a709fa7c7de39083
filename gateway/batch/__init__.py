"""The parts of aml-classify (gateway/cli.py): patient folders, posting to the gateway, the results file."""
