"""The Function App: logging set-up and the blueprints of ``functions/``, nothing else."""

import logging

import azure.functions as func

from functions.api import bp as api_bp
from functions.ca_api import bp as ca_api_bp
from functions.hub_events import bp as hub_events_bp
from functions.lifecycle import bp as lifecycle_bp
from functions.sweep import bp as sweep_bp
from functions.worker import bp as worker_bp
from shared.domain.redact import install_log_redaction

logging.getLogger("azure").setLevel(logging.WARNING)
install_log_redaction()  # no function key, token or PIN in a log line

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
for blueprint in (hub_events_bp, lifecycle_bp, sweep_bp, worker_bp, api_bp, ca_api_bp):
    app.register_functions(blueprint)
