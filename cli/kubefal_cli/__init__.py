"""``kubefal``: the command line for kubefal.

Runs a ``fal.App`` locally behind a real gateway (``kubefal run``), deploys it to a cluster
(``kubefal deploy`` / ``kubefal render``), shows apps and runners, and manages API keys
(``kubefal keys``). Talks to the Kubernetes API through the ``kubernetes`` package only; shares
nothing with the other kubefal processes except ``kubefal_api``.
"""
