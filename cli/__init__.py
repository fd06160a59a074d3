"""The ``certroll`` command line (never deployed: it may import :mod:`local`).

- :mod:`cli.main` builds the one parser from the explicit list of command modules and
  runs a command;
- :mod:`cli.exits` is the one table from typed errors to exit codes and stderr lines;
- :mod:`cli.common` holds what every command module shares (the ``Command`` record,
  the audited actor, text and JSON output through :func:`shared.render.to_jsonable`);
- :mod:`cli.pki` (``pki``, ``issue``, ``revoke``, ``crl``), :mod:`cli.rotation`
  (``disallow``, ``allow``, ``renew``, ``status``, ``sweep``) and :mod:`cli.localstack`
  (``serve``, ``demo``, ``report``) add the commands.

Importing a module here has no side effects; nothing is registered at import time.
"""
