"""aegis-proxy: a pre-execution firewall for AI agents."""

__version__ = "0.1.0"
