"""Process exit codes of the runner, which the operator reads from a crashed container's status.

3 for a failed ``setup()`` is the SDK's own code (uvicorn's startup failure); the others are the
runner's, chosen so that each cause of a crash loop can be told apart without reading logs.
"""

OK = 0
"""Drained and torn down after SIGTERM."""
TEARDOWN_FAILED = 1
"""``teardown()`` raised after a drain."""
BAD_SETTINGS = 2
"""A flag or environment variable is unusable (also argparse's code)."""
SETUP_FAILED = 3
"""``setup()`` raised; the traceback is in the log."""
REQUIREMENTS_FAILED = 4
"""Installing the requirements failed; pip's output is in the log."""
APP_LOAD_FAILED = 5
"""The app file or module could not be loaded, or does not define a usable fal.App."""
