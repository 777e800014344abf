"""slipway configuration: the typed settings tree and its layered loader."""

from configs.loader import ConfigError, LoadedConfig, config_schema, load_config, process_environment
from configs.settings import Settings

__all__ = ["ConfigError", "LoadedConfig", "Settings", "config_schema", "load_config", "process_environment"]
