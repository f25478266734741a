"""promptq's shared core: what the client (``producer``) and the worker (``worker``) both speak.

Key names and the job and result documents (``contract``), the checks a job passes (``validation``),
the Lua scripts' loader and the shared Lua (``scripts``, ``lua/``), the queue's depths (``depths``),
and the settings both sides read: the environment (``env``), Redis connections and the facts checked
about them (``connect``, ``guard``), prices (``prices``), traces (``tracing``), supervised background
tasks (``background``). It imports neither side; ``import promptq_core`` loads nothing.
"""
