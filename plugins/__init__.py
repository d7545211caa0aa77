"""Built-in capability plugins, one module each, loaded like third-party ones."""
