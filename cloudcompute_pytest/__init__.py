"""The pytest plugin of cloudcompute (``cloudcompute_pytest.plugin``).

A package of its own, next to ``cloudcompute``: pytest imports every
installed plugin at start-up, and importing this one must not import
cloudcompute (openstacksdk, paramiko) in test runs that never use it.
"""
