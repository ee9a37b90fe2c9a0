"""userlens: self-hosted user understanding (NCLUE-compatible) and customer profiles (AEP-compatible)."""

__version__ = "0.1.0"
