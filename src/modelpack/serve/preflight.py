"""The checks before serving, once, for `modelpack serve` and `modelpack.create_app` alike.

Options that go together, then the package (or every version a repository's policies serve) verified without
loading it (signature with `require_signature`, checksums) and the runtime asked for present: a mistake is a usage
or integrity error now, not a worker that fails later. Gives the `ServeConfig` to serve with, as a context: a
plain `.mpk` is served from its extraction, which lasts until the `with` block ends. `name` turns a
field into the way the caller spells it (`--ssl-certfile` on the command line, `ssl_certfile` in Python).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import IntegrityError, UsageError
from ..package import open_any
from .config import ServeConfig
from .sources import is_repository, read_repository


@contextmanager
def preflight(source: Path, options: dict[str, Any], name: Callable[[str], str],
              archives: bool = True) -> Iterator[ServeConfig]:
    """The config to serve `source` (a package, or a repository directory or file) with `options` (ServeConfig
    fields), after checking both; `archives=False` refuses a plain `.mpk` (an embedded app has no place to
    extract it)."""
    if bool(options.get("ssl_certfile")) != bool(options.get("ssl_keyfile")):
        raise UsageError(f"{name('ssl_certfile')} and {name('ssl_keyfile')} go together.")
    if options.get("register"):
        from ..discovery import parse_zk

        parse_zk(options["register"])
        if options.get("port") == 0 and options.get("workers", 1) > 1:
            raise UsageError(f"{name('register')} with {name('workers')} needs a fixed {name('port')}.")
    elif options.get("register_required"):
        raise UsageError(f"{name('register_required')} goes with {name('register')} zk://HOST:PORT/PATH.")
    if options.get("otlp_endpoint"):
        from .tracing import endpoint_from

        endpoint_from(options["otlp_endpoint"])  # a malformed URL is a usage error now, not a failed start
    pubkey = options.get("require_signature")
    signature = name("require_signature")
    if is_repository(source):
        if options.get("register") and options.get("workers", 1) > 1:
            raise UsageError(f"{name('register')} with a model repository needs {name('workers')} 1 (each worker "
                             "process would register its own versions).")
        spec = read_repository(source, options.get("oci_cache"))
        for model in spec.models.values():
            for version, location in model.wanted().items():
                with open_any(location, key_file=model.key_file or options.get("key_file"), need="memory") as pkg:
                    try:
                        pkg.verify(pubkey=pubkey, load=False, option=signature)
                    except IntegrityError as exc:
                        raise IntegrityError(f"refusing to serve model {model.name} version {version}: {exc}") \
                            from exc
                    pkg.artifact(options.get("runtime"))
        yield ServeConfig(package_dir=source, repository=source, **options)
        return
    if options.get("memory_budget_mb") is not None:
        raise UsageError(f"{name('memory_budget_mb')} goes with a model repository (a NAME/VERSION/ directory or a "
                         f".toml file), and '{source}' is one package.")
    if options.get("poll_s") is not None:
        raise UsageError(f"{name('poll_s')} goes with a model repository (a NAME/VERSION/ directory or a .toml "
                         f"file), and '{source}' is one package.")
    with open_any(source, key_file=options.get("key_file"), need="memory") as pkg:
        try:  # the same checks as `modelpack verify`, without loading: the server loads the one it serves
            pkg.verify(pubkey=pubkey, load=False, option=signature)
        except IntegrityError as exc:
            raise IntegrityError(f"refusing to serve: {exc}") from exc
        pkg.artifact(options.get("runtime"))  # a missing runtime is a usage error now, not a failed worker later
        if not archives and not pkg.encrypted and not source.is_dir():
            raise UsageError(f"'{source}' is a .mpk; unpack it to a directory first (modelpack serve does that "
                             "itself), or pass the package directory.")
        where = source if pkg.encrypted else pkg.root  # an encrypted .mpk is decrypted by each worker, in memory
        yield ServeConfig(package_dir=where, **options)
