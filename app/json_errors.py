"""One error shape for every machine-facing answer (API and webhooks).

    {"error": {"code": "not_found", "message": "no compute resource '7'"}}

`code` is stable for scripts to branch on; `message` is for the person reading the log.
"""
from flask import jsonify, request
from werkzeug.exceptions import HTTPException, InternalServerError
from werkzeug.routing import RequestRedirect

CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 409: "conflict", 413: "too_large", 415: "unsupported_media_type",
    422: "invalid", 500: "internal_error", 503: "unavailable",
}


class ApiError(Exception):
    """An answer other than success, with its HTTP status, a code and a message."""

    def __init__(self, http_status, message, code=None, **extra):
        super().__init__(message)
        self.http_status, self.message = http_status, message
        self.code = code or CODES.get(http_status, "error")
        self.extra = extra


def error_response(http_status, message, code=None, **extra):
    """The JSON error answer; a 401 also says which scheme to use."""
    response = jsonify({"error": {"code": code or CODES.get(http_status, "error"),
                                  "message": message, **extra}})
    response.status_code = http_status
    if http_status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="ferry"'
    return response


def _from_api_error(error):
    return error_response(error.http_status, error.message, error.code, **error.extra)


def _from_http_exception(error):
    return error_response(error.code or 500, error.description or error.name)


def _from_server_error(error):
    # The traceback goes to the log; the caller learns only that it was Ferry's fault.
    return error_response(500, "Ferry hit an unexpected error; the server log has the details.")


def register(bp, prefixes):
    """Answer errors in `bp` as JSON, and routing errors (404/405) under `prefixes` too."""
    bp.register_error_handler(ApiError, _from_api_error)
    bp.register_error_handler(InternalServerError, _from_server_error)
    bp.register_error_handler(HTTPException, _from_http_exception)

    @bp.before_app_request
    def json_routing_errors():
        """An unknown URL or method below a prefix matches no view, so no blueprint handler sees it."""
        error = request.routing_exception
        if error is None or isinstance(error, RequestRedirect):
            return None
        if request.path.startswith(prefixes) and isinstance(error, HTTPException):
            return _from_http_exception(error)
        return None
