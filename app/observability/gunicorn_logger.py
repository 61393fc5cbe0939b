"""Gunicorn's logger writing JSON lines too when FERRY_LOG_FORMAT=json (apart from logs.py:
importing gunicorn costs a third of a second that no CLI command should pay)."""
import os

from gunicorn import glogging

from app import config
from app.observability.logs import ContextFilter, JsonFormatter

ENV = "FERRY_LOG_FORMAT"


class GunicornLogger(glogging.Logger):
    """Gunicorn's logger, writing JSON lines too when FERRY_LOG_FORMAT=json.

    gunicorn --logger-class app.observability.gunicorn_logger.GunicornLogger ... (the container does)
    """

    def setup(self, cfg):
        """Gunicorn's own setup, then JSON formatting on its handlers if asked for."""
        super().setup(cfg)
        _, parse = config.ENVIRONMENT[ENV]  # a bad value stops gunicorn, naming the variable
        if ENV in os.environ and parse(ENV, os.environ[ENV]) == "json":
            for handler in self.error_log.handlers + self.access_log.handlers:
                handler.addFilter(ContextFilter())
                handler.setFormatter(JsonFormatter())
