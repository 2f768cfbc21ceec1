"""Optional integrations of grouprl's estimators and losses into other training frameworks.

Each integration is a module of its own, imported only by whoever uses it, so ``import grouprl``
and ``import grouprl.integrations`` never import a framework. The framework itself is an optional
extra; calling an integration's entry point without it raises one ``ImportError`` line naming
the extra to install.

* :mod:`grouprl.integrations.verl` — a verl (>= 0.9.1) plugin: ``register()`` adds grouprl's
  outcome estimators and policy losses to verl's registries as ``grouprl_<name>``
  (``pip install 'grouprl[verl]'``, in a venv of its own: verl caps transformers below 5.11).
  Load it in every verl process with ``VERL_USE_EXTERNAL_MODULES=grouprl.integrations.verl``.
  The adapters that turn verl's arguments into grouprl calls live in
  :mod:`grouprl.integrations.verl_adapters` and import no verl. Guide: docs/distributed.md,
  "verl plugin".
"""
