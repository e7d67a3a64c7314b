"""The server's log: uvicorn's and modelpack's loggers on stderr, as text or as JSON lines (`serve --json`).

The setup is a `logging.config.dictConfig` dictionary handed to uvicorn, which applies it in every
worker process too. `-q` keeps warnings and errors only.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

LOGGERS = ("uvicorn", "uvicorn.access", "modelpack")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message; an access line adds
    client, method, path and status; an exception adds its traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage(),
        }
        # uvicorn's access line: '%s - "%s %s HTTP/%s" %d' % (client, method, path, http version, status)
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, _, status = record.args
            entry.update(client=client, method=method, path=path, status=status)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class CountedNotLogged(logging.Filter):
    """Drops uvicorn's warning per refused request ("Exceeded concurrency limit.", "Invalid HTTP request
    received."): a client could otherwise write a log line per pipelined request. Each refusal is counted
    in `modelpack_refused_total` instead."""

    QUIET = ("Exceeded concurrency limit.", "Invalid HTTP request received.")

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "uvicorn.error" and record.msg in self.QUIET)


def log_config(as_json: bool, quiet: bool) -> dict[str, Any]:
    """The logging setup for uvicorn's `log_config`."""
    if as_json:
        formatter: dict[str, Any] = {"()": f"{__name__}.JsonFormatter"}
    else:
        formatter = {"()": "uvicorn.logging.DefaultFormatter", "fmt": "%(levelprefix)s %(message)s",
                     "use_colors": None}
    level = "WARNING" if quiet else "INFO"
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"main": formatter},
        "filters": {"counted": {"()": f"{__name__}.CountedNotLogged"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "main", "stream": "ext://sys.stderr",
                                "filters": ["counted"]}},
        "loggers": {name: {"handlers": ["stderr"], "level": level, "propagate": False} for name in LOGGERS},
    }
