"""A user's mistakes as one clear line and exit status 2, never a traceback: bad settings (naming
the variable and what it expects), misspelt ``ONEVEC_*`` variables (warned, with the closest
valid name), and unreachable addresses (named, found out within seconds)."""

from __future__ import annotations

import difflib
import logging
import os
import socket
from collections.abc import Iterable, Mapping

from pydantic import ValidationError

__all__ = ["UserError", "require_reachable", "settings_error", "unknown_variables", "warn_unknown_variables"]

log = logging.getLogger(__name__)

# ONEVEC_* names read outside the settings object: the settings file, the compose file's
# replica count, the CLI's worker URL.
OTHER_VARIABLES = frozenset({"ONEVEC_SETTINGS_FILE", "ONEVEC_INGEST_WORKERS", "ONEVEC_WORKER_URL"})


class UserError(Exception):
    """A mistake the user can fix: the command line prints its message alone and exits 2."""


def settings_error(error: ValidationError, prefix: str = "ONEVEC_") -> UserError:
    """The first refused setting, named as the variable the user sets."""
    first = error.errors()[0]
    name = prefix + "_".join(str(part) for part in first["loc"]).upper()
    given = os.environ.get(name)
    shown = f" (got {given!r})" if given is not None and "SECRET" not in name and "TOKEN" not in name else ""
    more = f"; {error.error_count() - 1} more refused" if error.error_count() > 1 else ""
    return UserError(f"{name}: {first['msg']}{shown}{more}")


def unknown_variables(
    environ: Mapping[str, str], fields: Iterable[str], prefix: str = "ONEVEC_"
) -> list[tuple[str, str | None]]:
    """(variable, closest valid name or None) for each ``ONEVEC_*`` variable nothing reads."""
    known = {prefix + field.upper() for field in fields} | OTHER_VARIABLES
    unknown = sorted(name for name in environ if name.startswith(prefix) and name not in known)
    return [
        (name, next(iter(difflib.get_close_matches(name, known, n=1, cutoff=0.8)), None)) for name in unknown
    ]


def warn_unknown_variables(environ: Mapping[str, str], fields: Iterable[str]) -> None:
    for name, closest in unknown_variables(environ, fields):
        hint = f"; did you mean {closest}?" if closest else ""
        log.warning("%s is not a onevec setting and is ignored%s", name, hint)


def require_reachable(address: str, what: str, timeout: float = 3.0) -> None:
    """UserError naming ``what`` and ``address`` ("host:port", or a URL with a port) when
    nothing accepts a TCP connection there within ``timeout`` seconds."""
    host_port = address.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return
    except ValueError:
        raise UserError(f"{what} address {address!r} has no port (expected host:port)") from None
    except OSError as error:
        raise UserError(f"cannot reach the {what} at {address}: {error.strerror or error}") from None
